//! A PR-Agent-style webhook server: verified deliveries from GitHub, GitLab, Bitbucket Cloud,
//! Bitbucket Data Center, Gitea and Azure DevOps, answered at once and processed in the
//! background, with comments posted back through a circuit breaker and retries.
//!
//! ```text
//! cargo run --example pr_agent_server                 # development mode, prints test commands (refused with GITHUB_API_URL and GITHUB_TOKEN set)
//! cargo run --example pr_agent_server -- --use-tunnel # plus a public URL (TUNNEL_SERVICE=...)
//! ```
//!
//! Settings (all optional; an address or a number left empty takes its default, a secret left
//! empty stops the server): `HOST`, `PORT`, `GITHUB_WEBHOOK_SECRET`, `GITLAB_WEBHOOK_TOKEN`,
//! `BITBUCKET_WEBHOOK_SECRET`, `BITBUCKET_SERVER_WEBHOOK_SECRET` (Bitbucket Data Center),
//! `GITEA_WEBHOOK_SECRET`, `AZURE_DEVOPS_WEBHOOK_USERNAME` / `AZURE_DEVOPS_WEBHOOK_PASSWORD`
//! (comma-separated values are several secrets, for rotation), `GITHUB_API_URL` +
//! `GITHUB_TOKEN` (and `GITLAB_`, `BITBUCKET_`, `BITBUCKET_SERVER_`, `GITEA_`, `AZURE_DEVOPS_`
//! `API_URL` / `TOKEN`, no URL having a default: a token set without its URL is named in a
//! warning, and the provider's comments are logged; an `https` API is reached over TLS, trusting the public roots and the
//! system's), `BITBUCKET_USERNAME` (with a Bitbucket Cloud API token or app password in
//! `BITBUCKET_TOKEN`: the Atlassian account's email, or the Bitbucket username for an app
//! password; the token is then sent with HTTP Basic authentication, where `BITBUCKET_TOKEN`
//! alone is an access token sent as `Bearer`; `BITBUCKET_USERNAME` without `BITBUCKET_API_URL` stops the server),
//! `BITBUCKET_SERVER_BOT_USER` and `AZURE_DEVOPS_BOT_USER` (the user the server comments as,
//! whose comments get no answer, see below: on Bitbucket Data Center its user name or slug, the
//! owner of a personal HTTP access token or the bot user of a project or repository one; on
//! Azure DevOps its `uniqueName`, as the sign-in name or e-mail address, or its identity `id`,
//! the owner of the personal access token), `CIRCUIT_BREAKER_FAILURE_THRESHOLD` (at least 1, default 5), `CIRCUIT_BREAKER_RECOVERY_TIMEOUT`
//! (seconds, more than 0, default 30),
//! `REQUEST_TIMEOUT_SECS` (1-600, default 10), `MAX_BODY_BYTES` (1 KiB-1 GiB, default 25 MiB),
//! `MAX_CONCURRENT_DELIVERIES` (1-65536, default 64: deliveries read at once, all providers
//! together; each is buffered whole before its signature is checked, 503 past it),
//! `MAX_PENDING_COMMENTS` (1-1048576, default 4096: comments of one provider queued, in flight
//! or waiting to be tried again, each provider its own; 503 past it),
//! `COMMENTS_IN_FLIGHT_PER_PROVIDER` (1-256, default 8: comments posted at once to one
//! provider), `GITHUB_COMMENT_INTERVAL_MS` (0-60000, default 1000: the least time between two
//! GitHub comments, as GitHub asks), `COMMENT_MAX_ATTEMPTS` (1-1000, default 20: attempts that reach the provider's
//! API before a comment that keeps failing is given up;
//! within one attempt, a request refused (a 408, a 503 with `Retry-After`, a refused HTTP/2
//! stream; not a 429, a rate limit, which is waited out) or never sent (no
//! connection) is sent again up to 3
//! times, so an attempt is at most 4 requests),
//! `COMMENT_MAX_AGE_SECS` (1-2592000, default 86400: a comment is given up rather than tried
//! again later than this after its delivery), `MAX_REMEMBERED_DRAFTS` (1-1048576, default
//! 10000: open drafts remembered, see below), `SHUTDOWN_GRACE_SECS` (0-3600, default 20: at
//! shutdown, once the connections are closed, how long pending comments still get to be
//! posted, one waiting out its backoff being tried once more at once; a second Ctrl-C or
//! `SIGTERM` ends the wait at once, and one sent while the open requests are still answered (for
//! at most 10 s) stops waiting for them too, their deliveries left unanswered for the provider
//! to deliver again; each comment pending is logged with its delivery id as the wait starts
//! (a container needs longer than 10 s plus the grace to stop: `docker stop -t 40`), and each
//! comment left at its end, as possibly posted if
//! its request was on its way; the process exits a second after that at most, the time to log them aside, even with a
//! comment's API host name still being looked up), `TUNNEL_SERVICE`, `TUNNEL_AUTH_TOKEN`,
//! `TUNNEL_REGION`, `TUNNEL_SERVER`, `TUNNEL_SECRET` (with `--use-tunnel`; without it, those set
//! are named in a warning), `GITHUB_HOOK_REPOSITORY` + `GITHUB_HOOK_ID`
//! (with `--use-tunnel`: a repository hook pointed at each tunnel URL, and back at its URL from
//! before when the server stops; it, like the app below,
//! needs `GITHUB_WEBHOOK_SECRET`, the hook's secret), `GITHUB_APP_ID` +
//! `GITHUB_APP_PRIVATE_KEY` or `GITHUB_APP_PRIVATE_KEY_PATH` (a GitHub App: deliveries that
//! come through one of its installations are commented on as the app, with that installation's
//! token; an installation suspended or uninstalled, as the app's `installation` events say,
//! has its token dropped and its pending comments given up, one that accepted new permissions
//! gets a new token; with `--use-tunnel` its hook is
//! pointed at each tunnel URL, and back when the server stops), `RUST_LOG` (default `info`; a filter that
//! does not parse stops the server; the log lines are coloured on a terminal only, and not with
//! `NO_COLOR` set). A value out
//! of range, or an `*_API_URL` that is not an `http` / `https` base URL without credentials,
//! stops the server with a message naming the variable; one that cannot be the provider's API is
//! printed as a warning (a `GITLAB_API_URL`, `GITEA_API_URL` or Bitbucket Cloud URL without its
//! `/api/v4`, `/api/v1` or `/2.0`, a GitHub Enterprise Server URL without its `/api/v3`,
//! `github.com` or `bitbucket.org` for their APIs, a `BITBUCKET_SERVER_API_URL` ending with
//! `/rest/api/1.0`, an `AZURE_DEVOPS_API_URL` naming a project after the organization). A comment given up is logged at
//! error level and counted in `/status` as `comments.failed`. A comment is not posted twice:
//! after a failure that may have come once the provider created it (a 500, 502 or 504, a
//! timeout, a connection lost after the request was sent) it is given up, not sent again; the
//! log names its delivery, to deliver again if the comment is missing (a delivery whose comment
//! failed is no longer remembered as handled: delivered again, with the same id, it is processed
//! again). A delivery handled is remembered 7 days (GitHub redelivers by hand the deliveries of
//! the last 3 days, GitHub Enterprise Server of the last 7), or `COMMENT_MAX_AGE_SECS` if
//! longer: delivered again meanwhile, it is answered `200` and not processed (the ids are kept
//! in memory, 100 000 per provider at most, the oldest forgotten first, and not across a
//! restart: a busier route, or a replicated server, needs a larger or a shared store, such as the
//! crate's `RedisReplayStore`). A 503, 429 or 408, or no connection made (none opened within
//! 10 s), is tried again later. A 503 is taken for the provider's refusal, as providers answer
//! it while down or in maintenance, so that their downtime loses no comment; a gateway in front
//! of the API that answers 503 for a connection to its backend reset after the write (rare)
//! would get the comment twice.
//!
//! Comments are posted to each provider's API at most `COMMENTS_IN_FLIGHT_PER_PROVIDER` (8) at a
//! time, with separate slots per provider: a provider that stalls or rate-limits delays only its own comments.
//! A wait one of them asks for (a rate limit, a `Retry-After`) holds back its comments sent with
//! the same credential (the token, or one installation of the GitHub App), without costing them
//! an attempt, and GitHub's comments go a `GITHUB_COMMENT_INTERVAL_MS` apart.
//! A GitHub App's installation tokens are fetched at most as many at once, of all installations.
//!
//! # What gets a comment
//!
//! One comment when a pull request becomes ready for review: it is opened or reopened and is
//! not a draft, or a draft is marked ready. Drafts, edits, new commits, closes and merges get
//! none. Per provider:
//!
//! | provider | events that comment |
//! |---|---|
//! | GitHub | `pull_request` `opened` / `reopened` (not draft), `ready_for_review` |
//! | GitLab | Merge Request Hook `open` / `reopen` (not draft, state `opened`: GitLab's "Test" button sends the newest merge request as an `open`, a merged one too), `update` of an open merge request whose `changes.draft` goes from true to false (before GitLab 16.3, whose title loses its `Draft:`, `[Draft]` or `(Draft)` prefix; not a `WIP:`, `[WIP]` or `Draft - ` one, which GitLab 14.0 dropped) |
//! | Bitbucket Cloud | `pullrequest:created` (not draft); `pullrequest:updated` of an open draft the server saw, now not a draft; Cloud cannot reopen a declined pull request |
//! | Bitbucket Data Center | `pr:opened` (not draft; Data Center's list of events has no reopen, a `pr:reopened` is taken as one should it come); the first other event of an open draft the server saw (`pr:modified`, `pr:from_ref_updated`, a review, not a comment) that shows it not a draft |
//! | Gitea / Forgejo | `pull_request` `opened` / `reopened` (not draft, no `WIP:` / `[WIP]` title prefix), `edited` of an open pull request whose title loses that prefix |
//! | Azure DevOps | `git.pullrequest.created` (not draft); `git.pullrequest.updated` of an active pull request, not a draft, that the server saw as a draft or whose message says it "published the pull request" |
//!
//! Bitbucket Cloud, Bitbucket Data Center and Azure DevOps send an update of a draft published,
//! but nothing in it says that the pull request was a draft before. The server remembers the
//! open drafts it sees in any of their events (at most `MAX_REMEMBERED_DRAFTS`; past that, the
//! one seen least recently is forgotten) and comments once on the first update that shows one
//! of them published. If that comment fails, the draft is remembered again, so that the update
//! delivered again (or the next one) gets it; if the provider may have posted it (a 502, say),
//! only that update delivered again gets it. The memory does not outlive the process: a draft
//! seen before a restart and not again after it is published without a comment (Azure DevOps'
//! English message still gets it one). A draft merged, declined or abandoned is forgotten; an abandoned Azure DevOps
//! pull request reactivated gets nothing. Gitea's draft prefixes are a server setting; the
//! example knows the default ones.
//!
//! Point one hook at the server for each repository. Two that both deliver its events (an
//! organization's hook and the repository's, a GitLab group or system hook and the project's,
//! the GitHub App and a repository hook while `GITHUB_TOKEN` is set) send each event twice,
//! under two delivery ids, and it gets two comments: the server tells copies apart by delivery
//! id only.
//!
//! Running as a GitHub App, the server comments with the token of the installation a delivery
//! names, and every delivery verified with `GITHUB_WEBHOOK_SECRET` may name one: keep that
//! secret the App's alone. A repository hook signed with it too (the repository's admins see
//! its secret) could name another account's installation, and have the App comment there.
//!
//! # Commands
//!
//! A new comment on a pull request whose first non-blank line is a command gets one answer:
//! `/review`, `/describe`, `/improve`, `/ask <question>` (queued, as the review is) and `/help`
//! (the list). Other comments, unknown commands (GitLab's own quick actions, other bots'),
//! edited or deleted comments, comments on issues, system notes and comments by bots (on GitLab,
//! whose payloads do not flag them: access token bots and service accounts, told by their
//! usernames) get none. Nor do, on Bitbucket Data Center and Azure DevOps, whose payloads flag
//! no comment posted through the API, the comments of the user the server comments as, when
//! `BITBUCKET_SERVER_BOT_USER` / `AZURE_DEVOPS_BOT_USER` names it (compared with the comment's
//! `actor` or `author` `name` or `slug`, and its `author`'s `uniqueName` or `id`, in any case): a
//! comment of the server comes back as a delivery. With a personal token, that user is a person's
//! account, whose own commands then get no answer either: give the server an account of its own.
//! No answer starts with `/`, so the server never answers itself.
//!
//! | provider | event |
//! |---|---|
//! | GitHub, Gitea / Forgejo | `issue_comment` `created`, on a pull request |
//! | GitLab | Note Hook on a merge request (an internal note, a Confidential Note Hook, is answered with an internal note) |
//! | Bitbucket Cloud | `pullrequest:comment_created` (answered as a reply) |
//! | Bitbucket Data Center | `pr:comment:added` (answered as a reply) |
//! | Azure DevOps | `ms.vss-code.git-pullrequest-comment-event` of a new comment (answered in a new thread; a reply in a thread, in that thread) |
//!
//! On Azure DevOps every comment the server starts is a new thread created closed, not active:
//! an active one would block the completion of a pull request under the branch policy "Check
//! for comment resolution" until someone resolved it by hand. A command given as a reply in an
//! existing thread (its `parentCommentId` not 0) is answered in that thread instead, as a reply
//! to it, leaving the thread's status as it is; the thread is the one its `_links` name
//! (`threads`, or `self`), and a reply whose links name none gets a new thread.
//!
//! Azure DevOps sends the same event when a comment is edited or deleted: such a comment is
//! told by its `lastContentUpdatedDate` (later than its `publishedDate`) or its `isDeleted`.
//!
//! Test deliveries get no comment (but GitLab's "Test" button, which sends a real merge request
//! as an `open`, see above): GitHub's `ping`; GitLab's "Test" of comment events, which sends the
//! project's newest note as if just written by whoever clicked Test (a note whose `user` is not
//! its author gets no answer); and Bitbucket Data Center's "Test
//! connection" `diagnostics:ping`, which it sends without `X-Hub-Signature` even when the webhook
//! has a secret: that one is answered `202` unverified, and does nothing (`/status` counts it as
//! no delivery). Azure DevOps' "Test" sends a sample event (the Fabrikam project's pull
//! request, whose `subscriptionId` is all zeros or the subscription's own): it gets no comment
//! either.

mod app;

use std::process::ExitCode;

use app::{Settings, StopSignals};
use tower_webhook::tunnel::TunnelConfig;

fn main() -> ExitCode {
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) => app::log_filter(Some(&value)),
        Err(std::env::VarError::NotPresent) => app::log_filter(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err("RUST_LOG is set to a value that is not UTF-8: set it to UTF-8 text".to_owned())
        }
    };
    let filter = match filter {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let colors = app::log_colors(
        std::io::IsTerminal::is_terminal(&std::io::stdout()),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colors)
        .with_writer(app::LogOutput::new(std::io::stdout(), std::io::stderr()))
        .init();
    // A runtime that cannot be built is an error like the others.
    let out = app::run_to_exit(run()).unwrap_or_else(|err| Err(err.into()));
    match out {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), tower::BoxError> {
    let use_tunnel = app::use_tunnel(std::env::args_os().skip(1))?;
    let settings = Settings::from_env()?;
    let app = app::build(&settings)?;
    let state = app.state.clone();

    let tunnel = match use_tunnel {
        true => Some(TunnelConfig::from_env()?.builder()),
        false => None,
    };
    // Listened for from here on: a second signal ends the wait for pending comments, and one
    // that comes while the first one's open requests are still being answered, the wait for
    // them too.
    let signals = StopSignals::listen()?;
    let running = app::start(&settings, app, tunnel, signals.nth(1)).await?;

    // Written to stdout, which may be closed (the output piped into `head`, say): that ends the
    // printing, not the server. Nothing, for a server stopped while its tunnel was starting.
    if let Err(err) = app::announce_running(&mut std::io::stdout().lock(), &settings, &running) {
        tracing::warn!(error = %err, "cannot print the routes and settings to stdout");
    }
    app::finish(running, &state, settings.shutdown_grace, &signals).await;
    Ok(())
}
