//! A master of the TLS cluster dies (`kill -9`) under a passthrough user's traffic over TLS:
//! its commands wait for the promotion and go on, on new TLS connections that are still
//! authenticated as that user (its ACL rules hold after the failover).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{key_for_slot, wait_until, Proxy};
use crate::{backend_config, cluster, exclusive_use};

#[test]
fn a_user_rides_through_a_master_failover_over_tls() {
    let _g = exclusive_use();
    let c = cluster();
    crate::acl::users();
    let mut cfg = backend_config(c);
    cfg.auth_mode = "passthrough".into();
    cfg.threads = Some(1);
    let p = Proxy::start(cfg);
    p.wait_ready();
    let key = key_for_slot(1000, "app:fo:");
    let master = p
        .shared
        .cluster
        .snapshot()
        .master_for(1000)
        .map(|n| n.addr.to_string())
        .unwrap();
    let port: u16 = master.rsplit(':').next().unwrap().parse().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let longest = Arc::new(AtomicU64::new(0));
    let mut con = p.conn();
    redis::cmd("AUTH")
        .arg("app")
        .arg("app-secret")
        .query::<()>(&mut con)
        .unwrap();
    let writer = {
        let (stop, done, errors, longest, key) = (
            stop.clone(),
            done.clone(),
            errors.clone(),
            longest.clone(),
            key.clone(),
        );
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r: redis::RedisResult<()> = redis::cmd("SET").arg(&key).arg(i).query(&mut con);
                longest.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                match r {
                    Ok(()) => {
                        i += 1;
                        done.store(i, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("SET during failover: {e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            con
        })
    };
    wait_until("traffic before the kill", Duration::from_secs(10), || {
        done.load(Ordering::Relaxed) > 10
    });
    c.kill(port);
    let killed_at = done.load(Ordering::Relaxed);
    wait_until(
        "the user's writes to go on after the promotion",
        Duration::from_secs(60),
        || done.load(Ordering::Relaxed) > killed_at + 20,
    );
    stop.store(true, Ordering::Relaxed);
    let mut con = writer.join().unwrap();
    // New connections after the failover are still the user's own.
    let r: redis::RedisResult<()> = redis::cmd("SET").arg("other:fo").arg(1).query(&mut con);
    assert_eq!(r.unwrap_err().code(), Some("NOPERM"));
    let who: String = redis::cmd("ACL").arg("WHOAMI").query(&mut con).unwrap();
    assert_eq!(who, "app");
    let v: u64 = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
    assert!(v + 1 >= done.load(Ordering::Relaxed));
    eprintln!(
        "failover over TLS: {} errors, longest SET {} ms",
        errors.load(Ordering::Relaxed),
        longest.load(Ordering::Relaxed)
    );
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "the retry budget should cover the failover"
    );
    // The cluster is whole again (three masters) for the tests after this one.
    wait_until("a healthy slot map", Duration::from_secs(30), || {
        p.shared.readiness().is_ok()
    });
}
