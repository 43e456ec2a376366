//! One cron line in one time zone, and the fire times it yields. Pure: no clock,
//! no I/O, so every rule (Sunday as 0 and 7, day-of-month OR day-of-week, DST) is
//! unit-tested here.
//!
//! The evaluation is croner's (Vixie cron semantics, chrono-tz zones). This file
//! fixes its options: 5 fields, or 6 with seconds first; no year field.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// A parsed cron line and the zone its wall-clock times are read in.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: Tz,
}

impl Schedule {
    /// Parses `expr` (crontab syntax) for the IANA zone `timezone`. The error is a
    /// sentence for a config error: it says which of the two is wrong and why.
    pub fn parse(expr: &str, timezone: &str) -> Result<Schedule, ScheduleError> {
        let zone: Tz = timezone
            .parse()
            .map_err(|_| ScheduleError::Zone(timezone.to_owned()))?;
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && fields != 5 && fields != 6 {
            return Err(ScheduleError::Expression {
                expr: expr.to_owned(),
                reason: format!(
                    "it has {fields} fields; a cron line has 5 (minute hour day-of-month month \
                     day-of-week) or 6 (seconds first)"
                ),
            });
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| ScheduleError::Expression {
                expr: expr.to_owned(),
                reason: e.to_string().trim_end_matches('.').to_owned(),
            })?;
        Ok(Schedule { cron, zone })
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first fire time strictly after `t`; `None` if the line never fires
    /// again (e.g. `0 0 31 2 *`).
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.zone), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The last fire time strictly before `t`.
    pub fn last_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.zone), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// Fire times in `(after, until]`, at most `limit` of them.
    pub fn between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < limit {
            match self.next_after(t) {
                Some(next) if next <= until => {
                    out.push(next);
                    t = next;
                }
                _ => break,
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("`{expr}` is not a cron schedule: {reason}")]
    Expression { expr: String, reason: String },
    #[error("`{0}` is not an IANA time zone name such as UTC or Europe/Berlin")]
    Zone(String),
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, TimeZone, Timelike, Weekday};

    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn sched(expr: &str) -> Schedule {
        Schedule::parse(expr, "UTC").unwrap()
    }

    #[test]
    fn sunday_is_both_0_and_7() {
        // 2026-11-22 is a Sunday.
        let from = utc(2026, 11, 18, 12, 0, 0);
        for expr in ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN", "0 9 * * sun"] {
            assert_eq!(
                sched(expr).next_after(from),
                Some(utc(2026, 11, 22, 9, 0, 0)),
                "{expr}"
            );
        }
    }

    #[test]
    fn day_of_month_and_day_of_week_are_ored_like_crontab() {
        // Every 13th AND every Friday, not only Friday the 13th.
        let s = sched("0 0 13 * 5");
        let fires = s.between(utc(2026, 11, 1, 0, 0, 0), utc(2026, 12, 31, 0, 0, 0), 100);
        assert!(fires.contains(&utc(2026, 11, 13, 0, 0, 0)), "{fires:?}");
        assert!(fires.contains(&utc(2026, 12, 13, 0, 0, 0)), "a Sunday 13th");
        assert!(fires.contains(&utc(2026, 11, 6, 0, 0, 0)), "a Friday");
        assert!(
            fires
                .iter()
                .all(|t| t.day() == 13 || t.weekday() == Weekday::Fri),
            "{fires:?}"
        );
        // Nov: 6, 13, 20, 27; Dec: 4, 11, 13, 18, 25.
        assert_eq!(fires.len(), 9, "{fires:?}");
        // A `*` on one side leaves only the other: every 13th.
        let s = sched("0 0 13 * *");
        let fires = s.between(utc(2026, 11, 1, 0, 0, 0), utc(2026, 12, 31, 0, 0, 0), 100);
        assert_eq!(
            fires,
            vec![utc(2026, 11, 13, 0, 0, 0), utc(2026, 12, 13, 0, 0, 0)]
        );
    }

    #[test]
    fn ranges_steps_lists_and_names_work_together() {
        let s = sched("*/20 9-10 * JAN,jul MON-WED");
        let fires = s.between(utc(2027, 1, 4, 0, 0, 0), utc(2027, 1, 5, 0, 0, 0), 100);
        // 2027-01-04 is a Monday: 09:00, 09:20, 09:40, 10:00, 10:20, 10:40.
        let minutes: Vec<(u32, u32)> = fires.iter().map(|t| (t.hour(), t.minute())).collect();
        assert_eq!(
            minutes,
            vec![(9, 0), (9, 20), (9, 40), (10, 0), (10, 20), (10, 40)]
        );
        assert_eq!(
            sched("0 12 1-10/3 * *").between(
                utc(2026, 12, 1, 0, 0, 0),
                utc(2026, 12, 31, 0, 0, 0),
                100
            ),
            vec![
                utc(2026, 12, 1, 12, 0, 0),
                utc(2026, 12, 4, 12, 0, 0),
                utc(2026, 12, 7, 12, 0, 0),
                utc(2026, 12, 10, 12, 0, 0),
            ]
        );
        // Nothing in February or March: the next fire is in July.
        assert_eq!(
            s.next_after(utc(2027, 2, 1, 0, 0, 0)),
            Some(utc(2027, 7, 5, 9, 0, 0))
        );
    }

    #[test]
    fn the_documented_extensions_work_and_a_bare_start_step_does_not() {
        let from = utc(2026, 11, 1, 0, 0, 0);
        // Friday the 13th only, with `+` (without it, Friday the 6th comes first).
        let friday_13th = sched("0 0 13 * +FRI");
        assert_eq!(
            friday_13th.next_after(from),
            Some(utc(2026, 11, 13, 0, 0, 0))
        );
        assert_eq!(
            friday_13th.next_after(utc(2026, 11, 13, 0, 0, 0)),
            Some(utc(2027, 8, 13, 0, 0, 0))
        );
        // The last day of the month, and the last Friday of the month.
        assert_eq!(
            sched("0 0 L * *").next_after(from),
            Some(utc(2026, 11, 30, 0, 0, 0))
        );
        assert_eq!(
            sched("0 0 * * 5#L").next_after(from),
            Some(utc(2026, 11, 27, 0, 0, 0))
        );
        // `5/10` is not crontab; `*/10` and `5-59/10` are.
        assert!(Schedule::parse("5/10 * * * *", "UTC").is_err());
        assert_eq!(
            sched("5-59/10 * * * *").next_after(from),
            Some(utc(2026, 11, 1, 0, 5, 0))
        );
    }

    #[test]
    fn a_sixth_leading_field_is_seconds() {
        let s = sched("*/15 * * * * *");
        assert_eq!(
            s.between(utc(2026, 1, 1, 0, 0, 0), utc(2026, 1, 1, 0, 1, 0), 100),
            vec![
                utc(2026, 1, 1, 0, 0, 15),
                utc(2026, 1, 1, 0, 0, 30),
                utc(2026, 1, 1, 0, 0, 45),
                utc(2026, 1, 1, 0, 1, 0),
            ]
        );
        // Five fields fire on second 0.
        assert_eq!(
            sched("* * * * *").next_after(utc(2026, 1, 1, 0, 0, 1)),
            Some(utc(2026, 1, 1, 0, 1, 0))
        );
    }

    #[test]
    fn nicknames_are_the_usual_lines() {
        let from = utc(2026, 11, 22, 10, 30, 0); // a Sunday
        for (nick, next) in [
            ("@hourly", utc(2026, 11, 22, 11, 0, 0)),
            ("@daily", utc(2026, 11, 23, 0, 0, 0)),
            ("@weekly", utc(2026, 11, 29, 0, 0, 0)),
            ("@monthly", utc(2026, 12, 1, 0, 0, 0)),
            ("@yearly", utc(2027, 1, 1, 0, 0, 0)),
        ] {
            assert_eq!(sched(nick).next_after(from), Some(next), "{nick}");
        }
    }

    fn berlin(expr: &str) -> Schedule {
        Schedule::parse(expr, "Europe/Berlin").unwrap()
    }

    #[test]
    fn a_time_in_the_spring_forward_gap_fires_once_at_the_end_of_the_gap() {
        // 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST; 02:30 never happens.
        // The job runs once at 03:00 CEST (01:00 UTC), as Vixie cron does, and at
        // 02:30 again from the next day on.
        let s = berlin("30 2 * * *");
        let fires = s.between(utc(2026, 3, 27, 12, 0, 0), utc(2026, 3, 31, 0, 0, 0), 10);
        assert_eq!(
            fires,
            vec![
                utc(2026, 3, 28, 1, 30, 0), // 02:30 CET
                utc(2026, 3, 29, 1, 0, 0),  // 03:00 CEST: the end of the gap
                utc(2026, 3, 30, 0, 30, 0), // 02:30 CEST
            ]
        );
        // A line that lists several times of the gap hour is an interval: its times
        // in the gap are skipped rather than all crammed into 03:00.
        let s = berlin("0,30 2 * * *");
        let fires = s.between(utc(2026, 3, 29, 0, 0, 0), utc(2026, 3, 29, 23, 0, 0), 10);
        assert!(fires.is_empty(), "{fires:?}");
    }

    #[test]
    fn a_fixed_time_in_the_repeated_fall_back_hour_fires_once() {
        // 2026-10-25 in Berlin: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
        let s = berlin("30 2 * * *");
        let fires = s.between(utc(2026, 10, 24, 12, 0, 0), utc(2026, 10, 26, 12, 0, 0), 10);
        assert_eq!(
            fires,
            vec![
                utc(2026, 10, 25, 0, 30, 0), // 02:30 CEST, the first of the two
                utc(2026, 10, 26, 1, 30, 0), // 02:30 CET the next day
            ]
        );
        // An every-15-minutes line runs through both copies of the hour: 8 fires
        // between 02:00 CEST and 02:59 CET, all distinct instants.
        let s = berlin("*/15 2 * * *");
        let fires = s.between(utc(2026, 10, 24, 23, 0, 0), utc(2026, 10, 25, 2, 0, 0), 20);
        assert_eq!(fires.len(), 8, "{fires:?}");
        assert_eq!(fires[0], utc(2026, 10, 25, 0, 0, 0));
        assert_eq!(fires[7], utc(2026, 10, 25, 1, 45, 0));
    }

    #[test]
    fn the_zone_decides_the_wall_clock() {
        let s = Schedule::parse("0 9 * * *", "America/New_York").unwrap();
        assert_eq!(
            s.next_after(utc(2026, 7, 1, 0, 0, 0)),
            Some(utc(2026, 7, 1, 13, 0, 0)) // 09:00 EDT
        );
        assert_eq!(
            s.next_after(utc(2026, 12, 1, 0, 0, 0)),
            Some(utc(2026, 12, 1, 14, 0, 0)) // 09:00 EST
        );
        assert_eq!(
            s.last_before(utc(2026, 12, 1, 14, 0, 0)),
            Some(utc(2026, 11, 30, 14, 0, 0))
        );
    }

    #[test]
    fn bad_lines_and_zones_say_why() {
        for (expr, needle) in [
            ("61 * * * *", "61"),
            ("* * * *", "has 4 fields"),
            ("0 0 0 1 1 * 2030", "has 7 fields"),
            ("0 9 * * FUNDAY", "illegal"),
            ("@every 5m", "@every"),
        ] {
            let err = Schedule::parse(expr, "UTC").unwrap_err().to_string();
            assert!(
                err.to_lowercase().contains(&needle.to_lowercase()) && !err.ends_with('.'),
                "{expr}: {err}"
            );
        }
        assert_eq!(
            Schedule::parse("* * * * *", "Mars/Olympus").unwrap_err(),
            ScheduleError::Zone("Mars/Olympus".into())
        );
    }

    #[test]
    fn a_line_that_never_fires_has_no_next_time() {
        assert_eq!(
            sched("0 0 31 2 *").next_after(utc(2026, 1, 1, 0, 0, 0)),
            None
        );
    }
}
