//! The standard `process_*` metrics of the orchestrator itself (the names and help texts every Prometheus
//! client library uses), read on each scrape from `/proc/self/stat` (one read of a descriptor kept open),
//! a `stat` of `/proc/self/fd` and `getrlimit`: the prometheus crate's collector also re-read
//! `/proc/self/limits` and `/proc/self/status` and parsed them through a general procfs layer on every
//! scrape.

use std::sync::LazyLock;

use super::Format;

/// What does not change while the process runs: clock ticks per second, page size, boot time.
struct Constants {
    ticks_per_second: f64,
    page_size: f64,
    /// Unix time of the system's boot (`btime` of `/proc/stat`), which `starttime` counts from.
    boot_time: Option<f64>,
}

static CONSTANTS: LazyLock<Constants> = LazyLock::new(|| {
    // SAFETY: sysconf only reads system configuration.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
        stat.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|seconds| seconds.trim().parse::<f64>().ok())
    });
    Constants {
        ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
        page_size: if page > 0 { page as f64 } else { 4096.0 },
        boot_time,
    }
});

/// Writes the `process_*` families; families whose source cannot be read are left out.
pub(super) fn write(text: &mut String, format: Format) {
    let constants = &*CONSTANTS;
    if let Some(stat) = read_stat() {
        family(
            text,
            format,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            "counter",
            (stat.utime + stat.stime) / constants.ticks_per_second,
        );
        family(
            text,
            format,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            "gauge",
            stat.vsize,
        );
        family(
            text,
            format,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            "gauge",
            stat.rss * constants.page_size,
        );
        if let Some(boot_time) = constants.boot_time {
            family(
                text,
                format,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                "gauge",
                boot_time + stat.starttime / constants.ticks_per_second,
            );
        }
        family(
            text,
            format,
            "process_threads",
            "Number of OS threads in the process.",
            "gauge",
            stat.threads,
        );
    }
    if let Some(fds) = open_fds() {
        family(
            text,
            format,
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
            fds as f64,
        );
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        family(
            text,
            format,
            "process_max_fds",
            "Maximum number of open file descriptors.",
            "gauge",
            limit.rlim_cur as f64,
        );
    }
}

fn family(text: &mut String, format: Format, name: &str, help: &str, kind: &str, value: f64) {
    // OpenMetrics names a counter's family without the `_total` its sample keeps.
    let family = match format {
        Format::OpenMetrics if kind == "counter" => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    for part in [
        "# HELP ",
        family,
        " ",
        help,
        "\n# TYPE ",
        family,
        " ",
        kind,
        "\n",
        name,
        " ",
    ] {
        text.push_str(part);
    }
    super::service::number(text, value);
}

/// The fields of `/proc/self/stat` the metrics use, as numbers.
struct Stat {
    utime: f64,
    stime: f64,
    threads: f64,
    starttime: f64,
    vsize: f64,
    rss: f64,
}

/// The number of open descriptors: the size `stat` gives `/proc/self/fd` (Linux 6.2 and later: one system
/// call), else the length of its listing, less the listing's own descriptor.
fn open_fds() -> Option<u64> {
    let size = std::fs::metadata("/proc/self/fd").ok()?.len();
    if size > 0 {
        return Some(size);
    }
    let listed = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(listed.saturating_sub(1))
}

/// `/proc/self/stat`, read at offset 0 of a descriptor kept open (the kernel writes it anew on each read;
/// opening it is most of the cost).
fn read_stat() -> Option<Stat> {
    use std::os::unix::fs::FileExt;
    static FILE: LazyLock<Option<std::fs::File>> =
        LazyLock::new(|| std::fs::File::open("/proc/self/stat").ok());
    let mut buffer = [0u8; 1024];
    let length = FILE.as_ref()?.read_at(&mut buffer, 0).ok()?;
    parse_stat(std::str::from_utf8(&buffer[..length]).ok()?)
}

/// Fields after the command name, which is in parentheses and may itself hold spaces and parentheses.
fn parse_stat(stat: &str) -> Option<Stat> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // `after_name` starts at field 3 (state); field N is at index N - 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        threads: field(20)?,
        starttime: field(22)?,
        vsize: field(23)?,
        rss: field(24)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (fog (test) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 123456 \
                    1048576 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let parsed = parse_stat(stat).unwrap();
        assert_eq!(parsed.utime, 250.0);
        assert_eq!(parsed.stime, 50.0);
        assert_eq!(parsed.threads, 7.0);
        assert_eq!(parsed.starttime, 123456.0);
        assert_eq!(parsed.vsize, 1048576.0);
        assert_eq!(parsed.rss, 300.0);
    }

    #[test]
    fn open_descriptors_are_counted() {
        let held: Vec<std::fs::File> = (0..64)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        // Other tests' threads open and close descriptors meanwhile: a range, not one number.
        let counted = open_fds().unwrap();
        let listed = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
        assert!(counted >= 64 + 3, "{counted} open while 64 are held");
        assert!(counted <= listed + 64, "{counted} open, {listed} listed");
        drop(held);
    }

    #[test]
    fn every_family_is_written_for_this_process() {
        let mut text = String::new();
        write(&mut text, Format::Text);
        for name in [
            "process_cpu_seconds_total",
            "process_virtual_memory_bytes",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_threads",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(
                text.contains(&format!("\n{name} ")),
                "{name} missing from:\n{text}"
            );
        }
    }
}
