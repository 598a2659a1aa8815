//! `/topics`: every published topic with its epoch, sequence, subscribers, messages per
//! second and history held, paginated, and the patterns clients subscribe to. The figures are
//! gathered on demand: a request raises [`crate::report::Stats::topics_wanted`], the shards
//! then send their subscriber counts with their reports and the dispatcher its topic rows
//! (kept two by two, for the rate), and the flag falls again a minute after the last request,
//! so a server nobody asks pays nothing. The first request waits for two reports (about two
//! report intervals). docs/operations.md, "/topics".

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Context;

/// Longest page.
pub const MAX_LIMIT: usize = 1000;

/// How long the figures stay wanted after the last request.
pub const WANTED_FOR: Duration = Duration::from_secs(60);

/// A page request: `offset` (default 0), `limit` (default 100, at most [`MAX_LIMIT`]),
/// `sort` (`name`, `subscribers` or `rate`; the last two busiest first), `prefix` (only
/// topics starting with it).
struct Page {
    offset: usize,
    limit: usize,
    sort: String,
    prefix: String,
}

fn page(query: Option<&str>) -> Result<Page, String> {
    let mut p = Page {
        offset: 0,
        limit: 100,
        sort: "name".into(),
        prefix: String::new(),
    };
    for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let number = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{k}={v:?} is not a number"))
        };
        match k {
            "offset" => p.offset = number(v)?,
            "limit" => p.limit = number(v)?.clamp(1, MAX_LIMIT),
            "sort" if matches!(v, "name" | "subscribers" | "rate") => p.sort = v.into(),
            "sort" => return Err(format!("sort={v:?}: name, subscribers or rate")),
            "prefix" => p.prefix = v.into(),
            _ => {
                return Err(format!(
                    "unknown parameter {k:?}: offset, limit, sort, prefix"
                ))
            }
        }
    }
    Ok(p)
}

/// When the figures were last asked for, for the flag's fall.
pub(crate) type Asked = std::sync::Mutex<Option<Instant>>;

/// Lowers the flag once nobody asked for [`WANTED_FOR`]; called from time to time. Its two
/// looks at `asked` are not one atomic step, which is sound because everything that writes
/// `asked` (requests, the `_sys.stats` sampler) runs on the admin thread's one-thread runtime,
/// between awaits.
pub(crate) fn expire(ctx: &Context, asked: &Asked) {
    let stale = asked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_some_and(|at| at.elapsed() > WANTED_FOR);
    if stale {
        *asked.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let mut s = ctx.stats.lock().unwrap_or_else(|e| e.into_inner());
        s.topics_wanted.store(false, Ordering::Relaxed);
        s.topic_rows = None;
        s.topic_rows_before = None;
    }
}

/// The `n` busiest topics over the latest two row sets (kept wanted by whoever calls this: see
/// [`super::sampler`]): by frames delivered per second (messages per second times exact
/// subscribers), then by messages per second; as `{"topic","msgs_per_s","subscribers",
/// "msgs_out_per_s"}`. Empty until two row sets newer than three report intervals are in.
pub(crate) fn busiest(ctx: &Context, n: usize) -> Vec<serde_json::Value> {
    let interval = ctx.report_interval.unwrap_or(Duration::from_secs(1));
    let since = Instant::now()
        .checked_sub(interval * 3)
        .unwrap_or_else(Instant::now);
    let Some(f) = fresh(ctx, since) else {
        return Vec::new();
    };
    let seconds = f.at.saturating_duration_since(f.before.0).as_secs_f64();
    if seconds <= 0.0 {
        return Vec::new();
    }
    let before: HashMap<&str, u64> = f.before.1.iter().map(|r| (&*r.name, r.seq)).collect();
    let mut rows: Vec<(f64, f64, u64, &crate::dispatcher::TopicRow)> = f
        .rows
        .iter()
        .filter_map(|r| {
            let moved = r
                .seq
                .saturating_sub(before.get(&*r.name).copied().unwrap_or(0));
            let rate = moved as f64 / seconds;
            let subscribers = f.subscribers.get(&r.name).copied().unwrap_or(0);
            (rate > 0.0).then_some((rate * subscribers as f64, rate, subscribers, r))
        })
        .collect();
    rows.sort_by(|a, b| {
        (b.0.total_cmp(&a.0))
            .then_with(|| b.1.total_cmp(&a.1))
            .then_with(|| a.3.name.cmp(&b.3.name))
    });
    rows.into_iter()
        .take(n)
        .map(|(out, rate, subscribers, r)| {
            serde_json::json!({
                "topic": &*r.name,
                "msgs_per_s": rate,
                "subscribers": subscribers,
                "msgs_out_per_s": out,
            })
        })
        .collect()
}

/// The figures, once fresh: two row sets and every shard's counts newer than `since`.
fn fresh(ctx: &Context, since: Instant) -> Option<Figures> {
    let s = ctx.stats.lock().unwrap_or_else(|e| e.into_inner());
    let (at, rows) = s.topic_rows.clone()?;
    let before = s.topic_rows_before.clone()?;
    if at < since {
        return None;
    }
    let mut subscribers: HashMap<Arc<str>, u64> = HashMap::new();
    for shard in 0..ctx.shards {
        let r = s.shards.get(shard)?.as_ref()?;
        if s.reported_at.get(shard).copied().flatten()? < since {
            return None;
        }
        for (name, n) in r.topic_subscribers.as_ref()? {
            *subscribers.entry(name.clone()).or_default() += u64::from(*n);
        }
    }
    Some(Figures {
        at,
        rows,
        before,
        subscribers,
    })
}

struct Figures {
    at: Instant,
    rows: Arc<Vec<crate::dispatcher::TopicRow>>,
    before: (Instant, Arc<Vec<crate::dispatcher::TopicRow>>),
    subscribers: HashMap<Arc<str>, u64>,
}

/// Answers `/topics?…`: `(status, body)`.
pub(crate) async fn answer(
    ctx: &Context,
    asked: &Asked,
    query: Option<&str>,
) -> (u16, serde_json::Value) {
    let p = match page(query) {
        Ok(p) => p,
        Err(e) => return (400, serde_json::json!({ "error": e })),
    };
    let now = Instant::now();
    let already = asked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(now)
        .is_some();
    ctx.stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .topics_wanted
        .store(true, Ordering::Relaxed);
    let interval = ctx.report_interval.unwrap_or(Duration::from_secs(1));
    // Figures of the last two intervals will do while they are wanted already; a first ask
    // waits for reports made after it.
    let since = if already {
        now.checked_sub(interval * 2).unwrap_or(now)
    } else {
        now
    };
    let deadline = now + interval * 3 + Duration::from_millis(500);
    let f = loop {
        if let Some(f) = fresh(ctx, since) {
            break f;
        }
        if Instant::now() > deadline {
            return (
                503,
                serde_json::json!({"error": "the shards' figures did not come in time; ask again"}),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seconds = f.at.saturating_duration_since(f.before.0).as_secs_f64();
    let before: HashMap<&str, u64> = f.before.1.iter().map(|r| (&*r.name, r.seq)).collect();
    let mut topics: Vec<serde_json::Value> = f
        .rows
        .iter()
        .filter(|r| r.name.starts_with(&p.prefix))
        .map(|r| {
            let rate = (seconds > 0.0).then(|| {
                r.seq
                    .saturating_sub(before.get(&*r.name).copied().unwrap_or(0))
                    as f64
                    / seconds
            });
            serde_json::json!({
                "topic": &*r.name,
                "epoch": ctx.epoch,
                "seq": r.seq,
                "subscribers": f.subscribers.get(&r.name).copied().unwrap_or(0),
                "msgs_per_sec": rate,
                "history_messages": r.history_messages,
                "history_bytes": r.history_bytes,
            })
        })
        .collect();
    let key = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    match p.sort.as_str() {
        "subscribers" => {
            topics.sort_by(|a, b| key(b, "subscribers").total_cmp(&key(a, "subscribers")))
        }
        "rate" => topics.sort_by(|a, b| key(b, "msgs_per_sec").total_cmp(&key(a, "msgs_per_sec"))),
        _ => topics.sort_by(|a, b| a["topic"].as_str().cmp(&b["topic"].as_str())),
    }
    let total = topics.len();
    let topics: Vec<_> = topics.into_iter().skip(p.offset).take(p.limit).collect();
    let mut patterns: Vec<(&Arc<str>, &u64)> = f
        .subscribers
        .iter()
        .filter(|(n, _)| {
            n.ends_with(".*")
                && n.starts_with(&p.prefix)
                && !corecast_shards::topic::is_system(n.trim_end_matches(".*"))
        })
        .collect();
    patterns.sort();
    let patterns: Vec<_> = patterns
        .into_iter()
        .map(|(n, c)| serde_json::json!({"pattern": &**n, "subscribers": c}))
        .collect();
    (
        200,
        serde_json::json!({
            "epoch": ctx.epoch,
            "total": total,
            "offset": p.offset,
            "limit": p.limit,
            "sort": p.sort,
            "rate_over_seconds": seconds,
            "topics": topics,
            "patterns": patterns,
        }),
    )
}
