// Signs payloads with @octokit/webhooks-methods and prints the signatures as JSON.
// argv[2]: path to the package directory; stdin: {"secret": str, "bodies": [str]}
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

const pkg = process.argv[2];
const { sign, verify } = await import(pathToFileURL(path.join(pkg, "dist-node", "index.js")).href);
const request = JSON.parse(readFileSync(0, "utf8"));
const out = [];
for (const body of request.bodies) {
  const signature = await sign(request.secret, body);
  if (!(await verify(request.secret, body, signature))) throw new Error("octokit cannot verify its own signature");
  out.push(signature);
}
process.stdout.write(JSON.stringify(out));
