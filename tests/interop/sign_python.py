"""Signs webhook payloads with the Python peer libraries and prints the headers as JSON.

stdin: {"cases": [{"body": str, "timestamp": int, "msg_id": str}], "secrets": {...}}
stdout: [{"standardwebhooks": str, "svix": str, "stripe": str, "slack": str}, ...]
"""
import json
import sys
from datetime import datetime, timezone

import slack_sdk.signature
import standardwebhooks
import stripe
import svix.webhooks


def main() -> None:
    request = json.load(sys.stdin)
    secrets = request["secrets"]
    sw = standardwebhooks.Webhook(secrets["standard_webhooks"])
    sv = svix.webhooks.Webhook(secrets["standard_webhooks"])
    slack = slack_sdk.signature.SignatureVerifier(secrets["slack"])
    out = []
    for case in request["cases"]:
        body, ts, msg_id = case["body"], case["timestamp"], case["msg_id"]
        when = datetime.fromtimestamp(ts, tz=timezone.utc)
        out.append(
            {
                "standardwebhooks": sw.sign(msg_id, when, body),
                "svix": sv.sign(msg_id, when, body),
                "stripe": stripe.WebhookSignature.generate_signature_header(
                    body, secrets["stripe"], timestamp=ts
                ),
                "slack": slack.generate_signature(timestamp=str(ts), body=body),
            }
        )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
