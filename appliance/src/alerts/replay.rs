//! What a rule would have raised over past readings: the "test" an administrator runs on a
//! rule, saved or not, before trusting it to wake people. Read-only.
//!
//! It walks each covered device's readings oldest first with the same conditions the live
//! evaluation applies to the newest ones ([`super::decide`]): `consecutive` readings in a
//! row beyond the threshold, or beyond it for `for_seconds` (the run of readings beyond it
//! began at least that long before), each on the value or its rate of change per minute;
//! clearing past the hysteresis. Two differences, both stated where it is shown: it starts
//! with no alert active and no readings before the range, and a silence rule is judged on
//! when readings were measured, where the live check goes by when they arrived.

use diesel::prelude::*;

use super::{AlertKind, Measure, RuleRequest, RuleScope};
use crate::devices::Device;
use crate::error::{Error, Result};
use crate::ids::{DeviceId, OrganisationId};
use crate::readings::points_between;
use crate::schema::devices;
use crate::store::DbConnection;

/// The most readings one replay reads; beyond it the result says it was cut short.
pub const MAX_POINTS: i64 = 1_000_000;

/// An alert the rule would have raised.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub device: DeviceId,
    pub serial: String,
    pub raised_at_us: i64,
    pub raised_value: Option<f64>,
    /// `None`: it would still be active at the end of the range.
    pub cleared_at_us: Option<i64>,
    pub cleared_value: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub episodes: Vec<Episode>,
    pub devices: usize,
    pub readings: usize,
    /// Some device's readings went past [`MAX_POINTS`] in all: the range was not read to
    /// its end.
    pub truncated: bool,
}

/// Replays `request` over the readings measured in `[since_us, until_us)` of the devices it
/// covers in `organisation`. The request is checked as creating it would be.
pub fn replay(
    conn: &mut DbConnection,
    organisation: OrganisationId,
    request: &RuleRequest,
    (since_us, until_us): (i64, i64),
) -> Result<Replay> {
    request.check(conn, organisation)?;
    if until_us <= since_us {
        return Err(Error::invalid("until", "must be after since"));
    }
    let mut query = devices::table.into_boxed();
    query = match request.scope {
        RuleScope::Device(device) => query.filter(devices::id.eq(device)),
        RuleScope::Site(site) => query.filter(devices::site_id.eq(site)),
        RuleScope::SiteKind(site, kind) => query
            .filter(devices::site_id.eq(site))
            .filter(devices::kind.eq(kind.as_str())),
    };
    let covered: Vec<Device> = query
        .order(devices::serial)
        .select(Device::as_select())
        .load(conn)?;
    let mut result = Replay {
        episodes: Vec::new(),
        devices: covered.len(),
        readings: 0,
        truncated: false,
    };
    let metric = (request.kind != AlertKind::Silent).then_some(request.metric.as_str());
    for device in covered {
        let budget = MAX_POINTS - result.readings as i64;
        if budget <= 0 {
            result.truncated = true;
            break;
        }
        let points = points_between(conn, device.id, metric, (since_us, until_us), budget)?;
        result.readings += points.len();
        if points.len() as i64 == budget {
            result.truncated = true;
        }
        let end = if result.truncated {
            points.last().map_or(until_us, |(_, at)| *at)
        } else {
            until_us
        };
        for (raised, cleared) in walk(request, &points, since_us, end) {
            result.episodes.push(Episode {
                device: device.id,
                serial: device.serial.clone(),
                raised_at_us: raised.1,
                raised_value: raised.0,
                cleared_at_us: cleared.map(|c| c.1),
                cleared_value: cleared.and_then(|c| c.0),
            });
        }
    }
    result.episodes.sort_by_key(|e| (e.raised_at_us, e.device));
    Ok(result)
}

/// A raise or a clearing: the value it happened on (none for silence) and when.
type Moment = (Option<f64>, i64);

/// The (raised, cleared) pairs `request` makes over one device's `points`, oldest first,
/// for the range `[since_us, end_us)`.
fn walk(
    request: &RuleRequest,
    points: &[(f64, i64)],
    since_us: i64,
    end_us: i64,
) -> Vec<(Moment, Option<Moment>)> {
    let mut episodes: Vec<(Moment, Option<Moment>)> = Vec::new();
    let mut raised: Option<Moment> = None;
    let mut change = |raise: bool, at: Moment| {
        if raise && raised.is_none() {
            raised = Some(at);
        } else if !raise && let Some(r) = raised.take() {
            episodes.push((r, Some(at)));
        }
    };
    match request.kind {
        AlertKind::Silent => {
            let limit = request.silent_seconds.saturating_mul(1_000_000);
            let mut heard = since_us;
            for &(_, at) in points {
                if at.saturating_sub(heard) >= limit {
                    change(true, (None, heard + limit));
                }
                change(false, (None, at));
                heard = at;
            }
            if end_us.saturating_sub(heard) >= limit {
                change(true, (None, heard + limit));
            }
        }
        AlertKind::Event => {
            for &(value, at) in points {
                change(value != 0.0, (Some(value), at));
            }
        }
        AlertKind::Above | AlertKind::Below => {
            let above = request.kind == AlertKind::Above;
            let for_us = request.for_seconds.saturating_mul(1_000_000);
            let mut previous: Option<(f64, i64)> = None;
            let (mut run_start, mut run_len): (Option<i64>, i32) = (None, 0);
            for &(value, at) in points {
                let measured = match request.measure {
                    Measure::Value => value,
                    Measure::Rate => match previous.replace((value, at)) {
                        Some((before, before_at)) if at > before_at => {
                            (value - before) / ((at - before_at) as f64 / 60_000_000.0)
                        }
                        _ => continue,
                    },
                };
                let beyond = if above {
                    measured > request.threshold
                } else {
                    measured < request.threshold
                };
                if beyond {
                    run_start.get_or_insert(at);
                    run_len = run_len.saturating_add(1);
                } else {
                    (run_start, run_len) = (None, 0);
                }
                let held = if request.for_seconds > 0 {
                    run_start.is_some_and(|start| start <= at - for_us)
                } else {
                    run_len >= request.consecutive
                };
                let back = if above {
                    measured < request.threshold - request.hysteresis
                } else {
                    measured > request.threshold + request.hysteresis
                };
                if held {
                    change(true, (Some(measured), at));
                } else if back {
                    change(false, (Some(measured), at));
                }
            }
        }
    }
    if let Some(r) = raised {
        episodes.push((r, None));
    }
    episodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SiteId;

    fn rule(kind: AlertKind, threshold: f64) -> RuleRequest {
        RuleRequest {
            scope: RuleScope::Site(SiteId(1)),
            name: "t".into(),
            kind,
            metric: "temperature_c".into(),
            threshold,
            hysteresis: 2.0,
            consecutive: 2,
            silent_seconds: 60,
            notify_email: String::new(),
            measure: Measure::Value,
            for_seconds: 0,
        }
    }

    const S: i64 = 1_000_000;

    #[test]
    fn consecutive_readings_raise_and_hysteresis_clears() {
        let points = [
            (85.0, 10 * S), // one beyond: not yet
            (70.0, 20 * S),
            (85.0, 30 * S),
            (90.0, 40 * S), // second in a row: raised
            (79.0, 50 * S), // below the threshold, within the hysteresis: stays
            (77.0, 60 * S), // past the hysteresis: cleared
            (95.0, 70 * S),
            (96.0, 80 * S), // raised again, still active at the end
        ];
        let episodes = walk(&rule(AlertKind::Above, 80.0), &points, 0, 100 * S);
        assert_eq!(
            episodes,
            vec![
                ((Some(90.0), 40 * S), Some((Some(77.0), 60 * S))),
                ((Some(96.0), 80 * S), None),
            ]
        );
    }

    #[test]
    fn a_duration_needs_the_run_to_have_begun_that_long_before() {
        let mut request = rule(AlertKind::Below, 10.0);
        request.for_seconds = 30;
        let points = [
            (5.0, 0),
            (5.0, 20 * S), // 20 s below: not yet
            (15.0, 30 * S),
            (5.0, 40 * S),
            (5.0, 60 * S),
            (5.0, 70 * S), // 30 s below since 40 s: raised
        ];
        let episodes = walk(&request, &points, 0, 100 * S);
        assert_eq!(episodes, vec![((Some(5.0), 70 * S), None)]);
    }

    #[test]
    fn a_rate_compares_the_change_per_minute() {
        let mut request = rule(AlertKind::Above, 10.0);
        request.measure = Measure::Rate;
        request.consecutive = 1;
        request.hysteresis = 0.0;
        // +5 per minute, then +20 per minute, then flat.
        let points = [(0.0, 0), (5.0, 60 * S), (25.0, 120 * S), (25.0, 180 * S)];
        let episodes = walk(&request, &points, 0, 200 * S);
        assert_eq!(
            episodes,
            vec![((Some(20.0), 120 * S), Some((Some(0.0), 180 * S)))]
        );
    }

    #[test]
    fn silence_raises_after_the_limit_and_clears_with_the_next_reading() {
        let points = [(1.0, 30 * S), (1.0, 200 * S), (1.0, 230 * S)];
        let episodes = walk(&rule(AlertKind::Silent, 0.0), &points, 0, 400 * S);
        assert_eq!(
            episodes,
            vec![
                ((None, 90 * S), Some((None, 200 * S))),
                ((None, 290 * S), None),
            ]
        );
    }

    #[test]
    fn events_raise_on_non_zero_and_clear_on_zero() {
        let points = [(0.0, S), (1.0, 2 * S), (1.0, 3 * S), (0.0, 4 * S)];
        let episodes = walk(&rule(AlertKind::Event, 0.0), &points, 0, 5 * S);
        assert_eq!(
            episodes,
            vec![((Some(1.0), 2 * S), Some((Some(0.0), 4 * S)))]
        );
    }
}
