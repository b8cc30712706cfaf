//! Running one test of this binary again, alone, in a child process (with another environment,
//! or limits the test may not set on itself).

/// The harness's full name of the test `name` in `module` (the test's `module_path!()`), as
/// `--exact` wants it: the module path without the binary's name, then the test's name.
pub(crate) fn test_path(module: &str, name: &str) -> String {
    let module = module.split_once("::").map_or("", |(_, path)| path);
    if module.is_empty() {
        name.to_owned()
    } else {
        format!("{module}::{name}")
    }
}

/// The command that runs the test `name` of `module` (its `module_path!()`) of this binary again,
/// alone, with `var` set to `value`, for the test to know it is the child: to run with
/// [`run_one`], once the child's environment is set.
#[allow(dead_code)] // not every binary runs a test alone
pub(crate) fn alone(module: &str, name: &str, var: &str, value: &str) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            &test_path(module, name),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(var, value);
    command
}

/// Runs `command` (this binary, told to run one test with `--exact`) to its end and fails the
/// calling test unless that one test ran and passed: a name that matches nothing passes
/// vacuously otherwise.
#[allow(dead_code)] // not every binary reads the child's output
pub(crate) fn run_one(command: &mut std::process::Command) {
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the child run failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
