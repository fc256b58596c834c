// Package cli is the kohakuriver command line, parsed with kong: the host
// and agent daemons (daemon.go, up.go) and the user commands, which talk
// to the host API with api.Client and run the system ssh through the
// gateway.
//
// # Basics
//
// Every user command is one kong struct in its own file whose Run method
// receives its dependencies, bound in run: the context (cancelled by
// SIGINT/SIGTERM), *Env (stdio, home directory, ssh binary, clock), *Output
// (the --format choice) and, through a provider, *Cluster (the API client and
// the host's addresses, resolved from the global flags and auth.json).
// Tests call run with their own Env; Main fills it from the process.
//
// # Caveats
//
//   - Commands print results to Env.Stdout and progress, prompts and hints to
//     Env.Stderr, so `--format json` output stays machine-readable.
//   - A command that runs another program (ssh, exec) returns exitError to
//     make its exit code the process's.
//   - The API token comes from KOHAKURIVER_TOKEN or ~/.kohakuriver/auth.json,
//     never from a global flag (command lines show in ps), and a saved
//     token is never sent to a host other than the one login saved it for.
//   - Host keys: the gateway's keys are fetched over the authenticated API
//     into ~/.kohakuriver/known_hosts and pinned under the HostKeyAlias
//     kohakuriver-gateway; every ssh the CLI runs or configures uses
//     StrictHostKeyChecking=yes. The file holds one cluster's keys at a
//     time.
//   - OpenSSH takes ~ from the passwd entry, not $HOME: generated configs
//     and printed commands use absolute paths.
package cli
