//! The document reader's confinement, seen from inside the child: started by the real binary
//! through `Sandbox` (the path every upload takes), a probe confined exactly like a reader
//! cannot read the data directory, connect to a local port or run a program, and gets none of
//! the server's environment. The same probe without confinement can, so the test can fail.

use std::time::Duration;

use companero::knowledge::confine::{Attempt, Probe};
use companero::knowledge::extract::ExtractLimits;
use companero::knowledge::sandbox::Sandbox;

fn sandbox() -> Sandbox {
    Sandbox {
        executable: env!("CARGO_BIN_EXE_companero").into(),
        limits: ExtractLimits::default(),
        timeout: Duration::from_secs(20),
        memory_bytes: 1 << 30,
        max_output_bytes: 1 << 20,
    }
}

fn all(attempts: &[Attempt], succeeded: bool) -> bool {
    !attempts.is_empty() && attempts.iter().all(|a| a.succeeded == succeeded)
}

// One test in this file: it sets an environment variable, which no other thread may race.
#[tokio::test]
async fn a_reader_child_cannot_reach_keys_the_database_the_network_or_programs() {
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(data.path().join("keys")).unwrap();
    let key = data.path().join("keys/signing-1.pem");
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let database = data.path().join("companero.db");
    std::fs::write(&database, "SQLite format 3\0").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap();
    // SAFETY: the only test of this binary; no other thread reads the environment now.
    unsafe { std::env::set_var("COMPANERO_SMTP_URL", "smtp://user:hunter2@mail.example") };
    assert!(std::env::vars().count() > 0);

    let probe = Probe {
        open: vec![key.clone(), database.clone()],
        connect: vec![port],
        exec: vec!["/bin/true".into()],
        unconfined: false,
    };

    // Control: the same child without confinement reaches all of it.
    let control = sandbox()
        .probe(&Probe {
            unconfined: true,
            ..probe.clone()
        })
        .await
        .unwrap();
    assert!(control.confinement.is_none());
    assert!(all(&control.open, true), "{control:?}");
    assert!(all(&control.connect, true), "{control:?}");
    assert!(all(&control.exec, true), "{control:?}");
    // The environment is emptied by the parent, confined or not.
    assert_eq!(control.env_vars, 0, "{control:?}");

    let confined = sandbox().probe(&probe).await.unwrap();
    eprintln!("confined child: {confined:?}");
    let confinement = confined.confinement.clone().expect("confined");
    assert!(confinement.seccomp, "{confined:?}");
    assert!(!confinement.landlock.starts_with("failed"), "{confined:?}");
    for attempts in [&confined.open, &confined.connect, &confined.exec] {
        assert!(all(attempts, false), "{confined:?}");
        for attempt in attempts.iter() {
            let error = attempt.error.as_deref().unwrap_or_default();
            assert!(
                error.contains("not permitted") || error.contains("denied"),
                "{attempt:?}"
            );
        }
    }
    assert_eq!(confined.env_vars, 0, "{confined:?}");
    assert_eq!(confined.cwd.as_deref(), Some(std::path::Path::new("/")));
    // Only the control's connection reached the listener.
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_ok(), "the control connected");
    assert!(listener.accept().is_err(), "the confined child did not");
}
