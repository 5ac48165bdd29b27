//! `companero bench nudges`: a day of a program for many enrolled end users, in-process on a
//! throw-away data directory with SQLite. The end users live on a test clock, so a day of
//! schedule plays out as fast as the scheduler can plan, claim and deliver it; messages are the
//! creator's text (no model), unless `--llm` is given, which also times the coach writing one.
//!
//! Figures: `plan_s` (enrolling everyone: goals, first steps and their jobs), `deliver_s` (the
//! advance through the day: every job claimed, every message stored in the person's
//! conversation, handed to the outbox and delivered), `deliveries_per_s`, and `idle_cpu_percent`
//! (the process's CPU over a quiet spell afterwards, with the job runner waiting).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::auth::RequestContext;
use crate::auth::accounts::Registration;
use crate::coaching::model::{Audience, Trigger};
use crate::coaching::people::NewEndUser;
use crate::coaching::rules::RuleInput;
use crate::config::Config;
use crate::server::Server;

pub struct NudgeBenchOptions {
    pub end_users: usize,
    /// A chat model: also time how long the coach takes to write one message.
    pub llm: Option<PathBuf>,
    /// Seconds of quiet measured for the idle CPU.
    pub idle_s: u64,
}

#[derive(Debug, Serialize)]
pub struct NudgeReport {
    pub end_users: usize,
    pub create_s: f64,
    pub plan_s: f64,
    pub deliver_s: f64,
    /// Jobs the advance ran (writes ahead of time, sends, prompts, rule sweeps).
    pub jobs_run: usize,
    pub deliveries: usize,
    pub deliveries_per_s: f64,
    pub idle_s: u64,
    pub idle_cpu_percent: f64,
    /// Seconds for the coach to write one proactive message (median of 3), with `--llm`.
    pub write_one_s: Option<f64>,
}

const SETUP_TOKEN: &str = "setup_bench-nudges";
/// Time zones of the end users, in turn.
const ZONES: [&str; 6] = [
    "Europe/Madrid",
    "Europe/London",
    "America/New_York",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "UTC",
];

/// CPU seconds this process has used (user + system).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

pub fn run(options: NudgeBenchOptions) -> anyhow::Result<NudgeReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("companero-bench-nudges-{}", std::process::id()));
    let result = runtime.block_on(measure(&options, &dir));
    std::fs::remove_dir_all(&dir).ok();
    result
}

async fn measure(
    options: &NudgeBenchOptions,
    dir: &std::path::Path,
) -> anyhow::Result<NudgeReport> {
    let mut config = Config::with_data_dir(dir.join("data"));
    config.bind = "127.0.0.1:0".parse().expect("an address");
    config.offline = true;
    config.setup_token = Some(SETUP_TOKEN.into());
    config.llm = options.llm.as_ref().map(|p| p.display().to_string());
    let server = Server::bind(&config)
        .await
        .context("cannot start the server")?;
    let state = server.state().clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    state.jobs.start(shutdown.clone());
    let session = state
        .auth
        .accounts
        .register(
            Registration {
                email: "bench@example.com".into(),
                password: "violet tractor sings at noon".into(),
                full_name: "Bench".into(),
                invitation: None,
                setup_token: Some(SETUP_TOKEN.into()),
            },
            &RequestContext {
                ip: None,
                request_id: "bench".into(),
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot register: {e}"))?;
    let principal = crate::http::auth::principal_from_token(&state, session.access_token)
        .await
        .map_err(|e| anyhow::anyhow!("cannot sign in: {}", e.message))?;
    let scope = principal.scope;
    let coaching = &state.coaching;
    let start: DateTime<Utc> = "2026-06-01T00:00:00Z".parse().expect("a time");
    let clock = coaching.create_test_clock(&scope, start).await?;
    let program = coaching
        .create_program(
            &scope,
            serde_json::from_value(serde_json::json!({
                "name": "Bench day",
                "goals": [{"key": "steps", "title": "Walk", "metric": "steps", "unit": "steps",
                           "target": 8000, "direction": "increase",
                           "check_in": {"every": "P1D", "at": "20:00"}}],
                "steps": [
                    {"key": "morning", "day": 0, "at": "09:00", "kind": "message",
                     "text": "Good morning! A ten-minute walk before lunch today?"},
                    {"key": "tomorrow", "day": 1, "at": "09:00", "kind": "message",
                     "text": "Day two: same again, a little longer."},
                ],
            }))
            .expect("a program"),
        )
        .await?;
    coaching.publish_program(&scope, &program.id).await?;
    // A rule too, so the day includes its sweeps over everyone (it fires for no one today).
    coaching
        .create_rule(
            &scope,
            RuleInput {
                name: "Quiet for three days".into(),
                enabled: true,
                trigger: Trigger::Inactivity { days: 3 },
                audience: Audience::default(),
                instruction: "Ask how it is going.".into(),
            },
        )
        .await?;

    let started = Instant::now();
    let mut people = Vec::with_capacity(options.end_users);
    for i in 0..options.end_users {
        let user = coaching
            .create_end_user(
                &scope,
                NewEndUser {
                    name: format!("Person {i}"),
                    time_zone: ZONES[i % ZONES.len()].into(),
                    test_clock_id: Some(clock.id.clone()),
                    consent: true,
                    email: None,
                    tags: Vec::new(),
                },
            )
            .await?;
        people.push(user.id);
    }
    let create_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    for person in &people {
        coaching.enroll(&scope, &program.id, person).await?;
    }
    let plan_s = started.elapsed().as_secs_f64();

    // The day: until every zone's evening check-in (New York's 20:00 is 00:00 UTC the next day).
    let started = Instant::now();
    let to = start + chrono::Duration::hours(30);
    let advanced = coaching.advance_clock(&scope, &clock.id, to).await?;
    let deliver_s = started.elapsed().as_secs_f64();
    let deliveries = coaching
        .nudges(&scope, None, Some("sent".into()), u32::MAX)
        .await?
        .len();

    let cpu_before = cpu_seconds();
    tokio::time::sleep(Duration::from_secs(options.idle_s)).await;
    let idle_cpu_percent = 100.0 * (cpu_seconds() - cpu_before) / options.idle_s.max(1) as f64;

    let write_one_s = match &options.llm {
        None => None,
        Some(_) => Some(time_writing(&state, &scope, &people[0]).await?),
    };
    shutdown.cancel();
    Ok(NudgeReport {
        end_users: options.end_users,
        create_s,
        plan_s,
        deliver_s,
        jobs_run: advanced.jobs_run.unwrap_or(0),
        deliveries,
        deliveries_per_s: deliveries as f64 / deliver_s.max(1e-9),
        idle_s: options.idle_s,
        idle_cpu_percent,
        write_one_s,
    })
}

/// The median of three messages written by the coach from an instruction.
async fn time_writing(
    state: &crate::http::AppState,
    scope: &crate::auth::TenantScope,
    person: &str,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while state.inference.chat().is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the chat model did not load");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let written = state
            .coaching
            .write_message(
                scope,
                person,
                "Encourage them to keep their morning walk going.",
            )
            .await?;
        anyhow::ensure!(written.by == "coach", "the model wrote nothing usable");
        times.push(started.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[1])
}
