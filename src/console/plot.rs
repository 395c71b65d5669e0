//! A coupon's burn-down plot as inline SVG, drawn on the server: its remaining stock
//! over the plotted window (from `stock_samples`), the area under it, and a dashed
//! line at each rotation that retired it or made it the one that serves (from
//! `coupon_rotations`), each with its reason as a tooltip. At most [`MAX_POINTS`]
//! points are drawn (the last sample of each slice of the width), and the area only on
//! plots wider than [`AREA_FROM_WIDTH`], so that a page of 300 plots stays a few hundred
//! kilobytes whatever the sampling rate.

use std::fmt::Write as _;

use chrono::NaiveDateTime;

use super::html::esc;
use crate::store::jobs::Rotation;

/// The size of a plot and the window it shows.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The window's start.
    pub from: NaiveDateTime,
    /// The window's end (now).
    pub to: NaiveDateTime,
}

/// The most points one line has.
pub const MAX_POINTS: f64 = 120.0;
/// Plots at least this wide have the area under the line filled.
pub const AREA_FROM_WIDTH: u32 = 400;

const PAD_LEFT: f64 = 34.0;
const PAD_RIGHT: f64 = 6.0;
const PAD_TOP: f64 = 8.0;
const PAD_BOTTOM: f64 = 16.0;

impl Frame {
    fn plot_width(&self) -> f64 {
        (self.width as f64 - PAD_LEFT - PAD_RIGHT).max(1.0)
    }

    fn plot_height(&self) -> f64 {
        (self.height as f64 - PAD_TOP - PAD_BOTTOM).max(1.0)
    }

    fn x(&self, t: NaiveDateTime) -> f64 {
        let span = (self.to - self.from).as_seconds_f64().max(1.0);
        let at = (t - self.from).as_seconds_f64().clamp(0.0, span);
        PAD_LEFT + at / span * self.plot_width()
    }

    fn y(&self, value: i64, max: i64) -> f64 {
        let share = value.max(0) as f64 / max.max(1) as f64;
        PAD_TOP + (1.0 - share) * self.plot_height()
    }
}

/// The plot of `coupon`: `samples` oldest first, `rotations` any (those of other
/// coupons and outside the window are left out).
pub fn burn_down<'a>(
    coupon: &str,
    samples: &[(NaiveDateTime, i64)],
    rotations: impl IntoIterator<Item = &'a Rotation>,
    frame: Frame,
) -> String {
    let (w, h) = (frame.width, frame.height);
    let mut svg = format!(
        "<svg class=\"burn\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"remaining stock of {} over time\" \
         data-coupon=\"{}\">",
        esc(coupon),
        esc(coupon)
    );
    let baseline = PAD_TOP + frame.plot_height();
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{PAD_LEFT}\" y1=\"{baseline:.1}\" x2=\"{:.1}\" y2=\"{baseline:.1}\"/>",
        PAD_LEFT + frame.plot_width()
    );
    let points = thinned(samples, &frame);
    let max = points.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    if points.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no samples yet</text>",
            PAD_LEFT + frame.plot_width() / 2.0,
            PAD_TOP + frame.plot_height() / 2.0
        );
    } else {
        let mut line = String::with_capacity(points.len() * 14);
        for (i, (x, v)) in points.iter().enumerate() {
            let _ = write!(
                line,
                "{}{x:.1},{:.1}",
                if i == 0 { 'M' } else { 'L' },
                frame.y(*v, max)
            );
        }
        let (first, last) = (points[0].0, points[points.len() - 1].0);
        if w >= AREA_FROM_WIDTH {
            let _ = write!(
                svg,
                "<path class=\"area\" d=\"{line}L{last:.1},{baseline:.1}L{first:.1},{baseline:.1}Z\"/>"
            );
        }
        let _ = write!(
            svg,
            "<path class=\"remaining\" d=\"{line}\"><title>{} remaining at the last sample</title></path>",
            points[points.len() - 1].1
        );
    }
    for r in rotations
        .into_iter()
        .filter(|r| r.from_coupon == coupon || r.to_coupon.as_deref() == Some(coupon))
        .filter(|r| r.rotated_at >= frame.from && r.rotated_at <= frame.to)
    {
        let x = frame.x(r.rotated_at);
        let _ = write!(
            svg,
            "<line class=\"rotation\" x1=\"{x:.1}\" y1=\"{PAD_TOP}\" x2=\"{x:.1}\" y2=\"{baseline:.1}\">\
             <title>{} UTC: {} rotated to {} ({}, {} left)</title></line>",
            r.rotated_at.format("%H:%M:%S"),
            esc(&r.from_coupon),
            esc(r.to_coupon.as_deref().unwrap_or("nothing")),
            esc(&r.reason),
            r.remaining
        );
    }
    let hours = (frame.to - frame.from).num_minutes() as f64 / 60.0;
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\
         <text x=\"{:.1}\" y=\"{baseline:.1}\" text-anchor=\"end\">0</text>\
         <text x=\"{PAD_LEFT}\" y=\"{:.1}\">-{hours}h</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">now</text></svg>",
        PAD_LEFT - 3.0,
        PAD_TOP + 8.0,
        compact(max),
        PAD_LEFT - 3.0,
        h as f64 - 3.0,
        PAD_LEFT + frame.plot_width(),
        h as f64 - 3.0
    );
    svg
}

/// `n` in at most four characters or so: `950`, `12k`, `1.2M`.
fn compact(n: i64) -> String {
    match n {
        n if n >= 10_000_000 => format!("{}M", n / 1_000_000),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// The samples as points, at most [`MAX_POINTS`]: the last sample of each slice of the
/// width.
fn thinned(samples: &[(NaiveDateTime, i64)], frame: &Frame) -> Vec<(f64, i64)> {
    let slice = (frame.plot_width() / MAX_POINTS).ceil().max(1.0);
    let mut points: Vec<(f64, i64)> = Vec::new();
    for (t, v) in samples
        .iter()
        .filter(|(t, _)| *t >= frame.from && *t <= frame.to)
    {
        let x = frame.x(*t);
        match points.last_mut() {
            Some(last) if (x / slice).floor() == (last.0 / slice).floor() => *last = (x, *v),
            _ => points.push((x, *v)),
        }
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn at(minutes: i64) -> NaiveDateTime {
        chrono::DateTime::from_timestamp(1_790_000_000, 0)
            .unwrap()
            .naive_utc()
            + TimeDelta::minutes(minutes)
    }

    fn frame() -> Frame {
        Frame {
            width: 300,
            height: 80,
            from: at(0),
            to: at(360),
        }
    }

    #[test]
    fn the_remaining_stock_is_one_path_point_per_sample_falling_to_the_right() {
        let samples = [(at(0), 100), (at(180), 50), (at(360), 0)];
        let svg = burn_down("NEW10", &samples, [], frame());
        let d = svg.split("class=\"remaining\" d=\"").nth(1).unwrap();
        let d = &d[..d.find('"').unwrap()];
        let points: Vec<(f64, f64)> = d
            .split(['M', 'L'])
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect();
        assert_eq!(points.len(), 3, "{d}");
        assert_eq!(points[0], (PAD_LEFT, PAD_TOP), "full at the left, on top");
        assert!(points[1].0 > points[0].0 && points[2].0 > points[1].0);
        assert!(points[2].1 > points[1].1 && points[1].1 > points[0].1);
    }

    #[test]
    fn a_rotation_of_the_coupon_is_marked_and_others_are_not() {
        let rotation = |from: &str, to: &str| Rotation {
            campaign_id: "newcomer".into(),
            from_coupon: from.into(),
            to_coupon: Some(to.into()),
            reason: "exhausted".into(),
            remaining: 0,
            rotated_at: at(200),
        };
        let rotations = [rotation("NEW10", "NEW8"), rotation("BACK5", "BACK4")];
        let svg = burn_down("NEW8", &[(at(10), 5)], &rotations, frame());
        assert_eq!(svg.matches("class=\"rotation\"").count(), 1, "{svg}");
        assert!(svg.contains("NEW10 rotated to NEW8 (exhausted, 0 left)"));
    }

    #[test]
    fn without_samples_no_line_is_drawn_and_the_plot_says_so() {
        let svg = burn_down("X<1>", &[], [], frame());
        assert!(!svg.contains("class=\"remaining\""));
        assert!(svg.contains("no samples yet") && svg.contains("X&lt;1&gt;"));
    }

    #[test]
    fn many_samples_are_thinned_to_at_most_max_points() {
        let samples: Vec<_> = (0..=3600)
            .map(|s| (at(0) + TimeDelta::seconds(s * 6), 3600 - s))
            .collect();
        let svg = burn_down("A", &samples, [], frame());
        let d = svg.split("class=\"remaining\" d=\"").nth(1).unwrap();
        let n = d[..d.find('"').unwrap()].matches(['M', 'L']).count();
        assert!(n <= MAX_POINTS as usize + 1 && n >= 60, "{n} points");
    }
}
