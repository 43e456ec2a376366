//! The posting calendar of a campaign month: which local days and times get a
//! post on each channel, turned into instants in the campaign's time zone.
//!
//! Pure date arithmetic: it never does I/O and never decides what a post says.
//!
//! The rules, so a planner can predict them:
//! - The month is cut into weeks from its first day: days 1–7, 8–14, 15–21, 22–28,
//!   and a short last week of 0–3 days (29th onwards).
//! - A week with `n` posts gives day `d` (0-based within the week)
//!   `ceil((d+1)·n/7) − ceil(d·n/7)` of them, which spreads them evenly and puts
//!   one on the week's first day. The short last week takes its days' share of the
//!   same pattern, so a month gets about `n · days / 7` posts.
//! - A day's posts go out at [`POSTING_TIMES`] local time (10:00, then 14:00 and
//!   18:00 when `n` is above 7), every channel at the same times.
//! - A local time is kept across a DST change: 10:00 stays 10:00 on the wall clock,
//!   so the UTC instant moves by the shift. A local time that does not exist (a
//!   spring-forward gap) moves forward by the gap; one that happens twice (a
//!   fall-back overlap) takes the earlier instant.

use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc};
use chrono::{LocalResult, Offset, TimeZone};
use chrono_tz::Tz;

/// Local posting times of one day: the first post at 10:00, a second and third
/// (only when more than 7 posts a week are asked for) in the afternoon.
pub const POSTING_TIMES: [NaiveTime; 3] = [hm(10, 0), hm(14, 0), hm(18, 0)];

/// Most posts a week (three a day); the table's check says the same.
pub const MAX_POSTS_PER_WEEK: u32 = 21;

/// One planned post of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub channel: String,
    /// The wall-clock time in the campaign's zone.
    pub local: NaiveDateTime,
    pub at: DateTime<Utc>,
    /// 0 for the channel's first post of the month, counting up.
    pub sequence: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("month `{0}` is not YYYY-MM")]
    Month(String),
    #[error("unknown time zone `{0}` (expected an IANA name such as Europe/Berlin)")]
    Zone(String),
    #[error("posts_per_week {0} is outside 1 to {MAX_POSTS_PER_WEEK}")]
    PostsPerWeek(i32),
}

pub type Result<T = (), E = Error> = std::result::Result<T, E>;

/// Parses `YYYY-MM` into the month's first and last day.
pub fn month_days(month: &str) -> Result<(NaiveDate, NaiveDate)> {
    let bad = || Error::Month(month.to_owned());
    let (year, mon) = month.split_once('-').ok_or_else(bad)?;
    if year.len() != 4 || mon.len() != 2 {
        return Err(bad());
    }
    let year: i32 = year.parse().map_err(|_| bad())?;
    let mon: u32 = mon.parse().map_err(|_| bad())?;
    let first = NaiveDate::from_ymd_opt(year, mon, 1).ok_or_else(bad)?;
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .ok_or_else(bad)?;
    let last = next.pred_opt().ok_or_else(bad)?;
    Ok((first, last))
}

/// Parses an IANA zone name.
pub fn zone(name: &str) -> Result<Tz> {
    name.parse::<Tz>().map_err(|_| Error::Zone(name.to_owned()))
}

/// Every post of the month for every channel, ordered by channel (as given), then
/// time.
pub fn plan(month: &str, posts_per_week: i32, tz: Tz, channels: &[String]) -> Result<Vec<Slot>> {
    let per_week = u32::try_from(posts_per_week)
        .ok()
        .filter(|n| (1..=MAX_POSTS_PER_WEEK).contains(n))
        .ok_or(Error::PostsPerWeek(posts_per_week))?;
    let local_times = local_times(month, per_week)?;
    let instants: Vec<DateTime<Utc>> = local_times.iter().map(|t| to_utc(tz, *t)).collect();
    let mut slots = Vec::with_capacity(channels.len() * local_times.len());
    for channel in channels {
        for (sequence, (local, at)) in local_times.iter().zip(&instants).enumerate() {
            slots.push(Slot {
                channel: channel.clone(),
                local: *local,
                at: *at,
                sequence,
            });
        }
    }
    Ok(slots)
}

/// The local posting times of one channel in `month`, in order.
pub fn local_times(month: &str, per_week: u32) -> Result<Vec<NaiveDateTime>> {
    let (first, last) = month_days(month)?;
    let mut times = Vec::new();
    let mut day = first;
    while day <= last {
        let in_week = day.day0() % 7;
        for time in POSTING_TIMES
            .iter()
            .take(posts_on_day(in_week, per_week) as usize)
        {
            times.push(day.and_time(*time));
        }
        day = match day.checked_add_days(Days::new(1)) {
            Some(next) => next,
            None => break,
        };
    }
    Ok(times)
}

/// Posts on day `d` (0–6) of a week with `n` posts: the difference of
/// `ceil(k·n/7)` at the day's two edges, which spreads `n` evenly over the week.
pub fn posts_on_day(d: u32, n: u32) -> u32 {
    let ceil = |k: u32| (k * n).div_ceil(7);
    ceil(d + 1) - ceil(d)
}

/// The instant of a wall-clock time in `tz`, keeping the wall clock across DST.
fn to_utc(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(earlier, _) => earlier.with_timezone(&Utc),
        // A gap: read the wall clock with the offset in force just before it, which
        // lands as far past the gap's end as the time was into the gap.
        LocalResult::None => {
            let before = local
                .checked_sub_signed(TimeDelta::hours(24))
                .unwrap_or(local);
            match tz.offset_from_local_datetime(&before).earliest() {
                Some(offset) => {
                    let shift = TimeDelta::seconds(i64::from(offset.fix().local_minus_utc()));
                    let utc = local.checked_sub_signed(shift).unwrap_or(local);
                    DateTime::from_naive_utc_and_offset(utc, Utc)
                }
                // No zone has two gaps a day apart; reading it as UTC at least keeps
                // the post on the right day.
                None => DateTime::from_naive_utc_and_offset(local, Utc),
            }
        }
    }
}

/// Builds a constant time. Only used in consts, so an out-of-range literal is a
/// compile error, never a runtime panic.
const fn hm(hour: u32, min: u32) -> NaiveTime {
    match NaiveTime::from_hms_opt(hour, min, 0) {
        Some(t) => t,
        None => panic!("posting time out of range"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Timelike;

    fn channels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn each_week_gets_exactly_its_posts_per_week() {
        for n in 1..=MAX_POSTS_PER_WEEK {
            let week: u32 = (0..7).map(|d| posts_on_day(d, n)).sum();
            assert_eq!(week, n, "n = {n}");
            assert!((0..7).all(|d| posts_on_day(d, n) <= 3), "n = {n}");
        }
    }

    #[test]
    fn three_posts_a_week_go_out_on_the_first_third_and_fifth_day() {
        let days: Vec<u32> = (0..7).filter(|d| posts_on_day(*d, 3) == 1).collect();
        assert_eq!(days, [0, 2, 4]);
    }

    #[test]
    fn a_thirty_day_month_with_three_a_week_has_thirteen_posts_per_channel() {
        // Four full weeks (12) and days 29–30, whose pattern posts on the first.
        let slots = plan("2026-11", 3, Tz::UTC, &channels(&["x", "linkedin"])).unwrap();
        assert_eq!(slots.iter().filter(|s| s.channel == "x").count(), 13);
        assert_eq!(slots.iter().filter(|s| s.channel == "linkedin").count(), 13);
        let last = slots.iter().rfind(|s| s.channel == "x").unwrap();
        assert_eq!(
            last.local.date(),
            NaiveDate::from_ymd_opt(2026, 11, 29).unwrap()
        );
    }

    #[test]
    fn a_daily_campaign_posts_every_day_of_february_at_ten() {
        let slots = plan("2028-02", 7, Tz::UTC, &channels(&["x"])).unwrap();
        assert_eq!(slots.len(), 29, "2028 is a leap year");
        assert!(slots.iter().all(|s| s.local.time() == POSTING_TIMES[0]));
    }

    #[test]
    fn more_than_seven_a_week_adds_afternoon_posts_and_never_repeats_a_time() {
        let times = local_times("2026-11", 21).unwrap();
        assert_eq!(times.len(), 90);
        let mut unique = times.clone();
        unique.dedup();
        assert_eq!(unique.len(), times.len());
        let times = local_times("2026-11", 10).unwrap();
        assert!(times.iter().any(|t| t.time() == POSTING_TIMES[1]));
        assert!(!times.iter().any(|t| t.time() == POSTING_TIMES[2]));
    }

    #[test]
    fn every_post_falls_inside_its_month() {
        for month in ["2026-01", "2026-02", "2026-04", "2026-12"] {
            let (first, last) = month_days(month).unwrap();
            for t in local_times(month, 5).unwrap() {
                assert!(first <= t.date() && t.date() <= last, "{month}: {t}");
            }
        }
    }

    #[test]
    fn ten_oclock_in_berlin_stays_ten_oclock_across_the_march_change() {
        let tz = zone("Europe/Berlin").unwrap();
        let slots = plan("2026-03", 7, tz, &channels(&["x"])).unwrap();
        for slot in &slots {
            let local = slot.at.with_timezone(&tz);
            assert_eq!((local.hour(), local.minute()), (10, 0), "{slot:?}");
        }
        // Summer time starts on Sunday 29 March 2026: 09:00 UTC before, 08:00 after.
        let utc_hour = |day: u32| slots[day as usize - 1].at.hour();
        assert_eq!(utc_hour(28), 9);
        assert_eq!(utc_hour(29), 8);
    }

    #[test]
    fn ten_oclock_in_new_york_stays_ten_oclock_across_the_november_change() {
        let tz = zone("America/New_York").unwrap();
        let slots = plan("2026-11", 7, tz, &channels(&["x"])).unwrap();
        // Standard time starts on Sunday 1 November 2026.
        assert_eq!(slots[0].at.hour(), 15);
        assert_eq!(slots[1].at.hour(), 15);
        let october = plan("2026-10", 7, tz, &channels(&["x"])).unwrap();
        assert_eq!(
            october[30].at.hour(),
            14,
            "31 October is still daylight time"
        );
    }

    #[test]
    fn a_time_inside_a_spring_forward_gap_moves_past_the_gap() {
        // São Paulo skipped 00:00–01:00 on 4 November 2018 (UTC-3 to UTC-2).
        let tz = zone("America/Sao_Paulo").unwrap();
        let local = NaiveDate::from_ymd_opt(2018, 11, 4)
            .unwrap()
            .and_hms_opt(0, 30, 0)
            .unwrap();
        let at = to_utc(tz, local);
        assert_eq!(at.with_timezone(&tz).time(), hm(1, 30));
    }

    #[test]
    fn an_unknown_zone_is_named_in_the_error() {
        assert_eq!(
            zone("Mars/Olympus").unwrap_err().to_string(),
            "unknown time zone `Mars/Olympus` (expected an IANA name such as Europe/Berlin)"
        );
    }

    #[test]
    fn a_malformed_month_or_count_is_rejected() {
        assert_eq!(month_days("2026-13"), Err(Error::Month("2026-13".into())));
        assert_eq!(month_days("26-01"), Err(Error::Month("26-01".into())));
        assert_eq!(
            plan("2026-01", 22, Tz::UTC, &[]),
            Err(Error::PostsPerWeek(22))
        );
    }
}
