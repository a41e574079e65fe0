//! Bar charts (PNG) of the benchmark's figures: podwire next to the kernel path (and, in grey,
//! the passt reference where there is one). The data and the gnuplot script are
//! written by this module; gnuplot (Debian's `gnuplot-nox`, `pngcairo` terminal) renders them.

use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// One group of bars.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub label: String,
    /// one value per series, None when not measured / not applicable
    pub values: Vec<Option<f64>>,
}

/// A clustered bar chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub ylabel: String,
    /// series names and colours ("#rrggbb")
    pub series: Vec<(String, String)>,
    pub groups: Vec<Group>,
}

/// Series colours: podwire, kernel path, passt reference.
pub const PODWIRE: &str = "#1f77b4";
pub const KERNEL: &str = "#ff7f0e";
pub const PASST: &str = "#a0a0a0";

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "'"))
}

/// The data file: a quoted label, then one column per series ('-' when missing).
pub fn data(chart: &Chart) -> String {
    let mut s = String::new();
    for g in &chart.groups {
        s.push_str(&quote(&g.label));
        for i in 0..chart.series.len() {
            match g.values.get(i).copied().flatten() {
                Some(v) if v.is_finite() => {
                    let _ = write!(s, " {v}");
                }
                _ => s.push_str(" -"),
            }
        }
        s.push('\n');
    }
    s
}

/// The gnuplot script that renders `data_file` into `png`.
pub fn script(chart: &Chart, data_file: &Path, png: &Path) -> String {
    let n = chart.series.len().max(1) as f64;
    let width = 1.0 / (n + 1.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "set terminal pngcairo size 960,520 noenhanced font 'sans,11'\n\
         set output {}\n\
         set title {}\n\
         set ylabel {}\n\
         set style data histograms\n\
         set style histogram clustered gap 1\n\
         set style fill solid 0.9 border -1\n\
         set boxwidth 1\n\
         set datafile missing '-'\n\
         set yrange [0:*]\n\
         set offsets 0,0,graph 0.12,0\n\
         set grid ytics\n\
         set key outside top center horizontal\n\
         set xtics nomirror{}",
        quote(&png.display().to_string()),
        quote(&chart.title),
        quote(&chart.ylabel),
        // many groups: slanted labels so that they do not overlap
        if chart.groups.len() > 4 {
            " rotate by 20 right\nset bmargin 6\nset lmargin 12"
        } else {
            ""
        },
    );
    let file = quote(&data_file.display().to_string());
    let mut parts = Vec::new();
    for (i, (name, colour)) in chart.series.iter().enumerate() {
        let col = i + 2;
        let src = if i == 0 { file.as_str() } else { "''" };
        let xtic = if i == 0 { ":xtic(1)" } else { "" };
        parts.push(format!(
            "{src} using {col}{xtic} title {} lc rgb '{colour}'",
            quote(name)
        ));
    }
    for i in 0..chart.series.len() {
        let col = i + 2;
        let dx = (i as f64 - (n - 1.0) / 2.0) * width;
        parts.push(format!(
            "'' using ($0{dx:+.4}):{col}:(${col} >= 1e6 ? sprintf('%.2fM', ${col} / 1e6) : \
             ${col} >= 1e4 ? sprintf('%.0fk', ${col} / 1e3) : ${col} >= 100 ? \
             sprintf('%.0f', ${col}) : sprintf('%.3g', ${col})) with labels offset 0,0.7 \
             font ',9' notitle"
        ));
    }
    let _ = writeln!(s, "plot {}", parts.join(", \\\n     "));
    s
}

/// Renders `chart` into `png` (writing `<png>.dat` and `<png>.gp` beside it in `work`).
pub fn render(chart: &Chart, png: &Path, work: &Path) -> Result<()> {
    let stem = png
        .file_stem()
        .context("a PNG path needs a file name")?
        .to_string_lossy()
        .into_owned();
    let dat = work.join(format!("{stem}.dat"));
    let gp = work.join(format!("{stem}.gp"));
    std::fs::write(&dat, data(chart))?;
    std::fs::write(&gp, script(chart, &dat, png))?;
    if let Some(dir) = png.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = Command::new("gnuplot")
        .arg(&gp)
        .output()
        .context("running gnuplot (apt-get install gnuplot-nox)")?;
    if !out.status.success() {
        bail!(
            "gnuplot failed on {}: {}",
            gp.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart() -> Chart {
        Chart {
            title: "TCP \"x\"".into(),
            ylabel: "Gbit/s".into(),
            series: vec![
                ("podwire".into(), PODWIRE.into()),
                ("kernel path".into(), KERNEL.into()),
            ],
            groups: vec![
                Group {
                    label: "guest → far, 1500".into(),
                    values: vec![Some(2.5), None],
                },
                Group {
                    label: "far → guest".into(),
                    values: vec![Some(f64::NAN), Some(1.0)],
                },
            ],
        }
    }

    #[test]
    fn data_marks_missing_values() {
        assert_eq!(
            data(&chart()),
            "\"guest → far, 1500\" 2.5 -\n\"far → guest\" - 1\n"
        );
    }

    #[test]
    fn script_plots_every_series_with_labels() {
        let s = script(&chart(), Path::new("/t/a.dat"), Path::new("/t/a.png"));
        assert!(s.contains("set output \"/t/a.png\""), "{s}");
        assert!(s.contains("set title \"TCP 'x'\""), "{s}");
        assert!(
            s.contains("\"/t/a.dat\" using 2:xtic(1) title \"podwire\""),
            "{s}"
        );
        assert!(s.contains("'' using 3 title \"kernel path\""), "{s}");
        assert!(s.contains("($0-0.1667):2"), "{s}");
        assert!(s.contains("($0+0.1667):3"), "{s}");
    }
}
