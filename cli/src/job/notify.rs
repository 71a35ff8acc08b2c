//! Telling someone how a job went: a mail through the local `sendmail`
//! interface, and the JSON summary POSTed to a webhook.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hoard_engine::{job_file::Job, job_file::NotifyWhen};

use super::summary::Summary;

/// Sends what the job's `[notify]` asks for; returns what could not be sent.
pub(crate) fn send(job: &Job, summary: &Summary) -> Vec<String> {
    let Some(n) = &job.notify else { return Vec::new() };
    let wanted = match n.when {
        NotifyWhen::Always => true,
        NotifyWhen::Failure => summary.status() != "ok",
        NotifyWhen::Never => false,
    };
    let mut failed = Vec::new();
    if !wanted {
        return failed;
    }
    if !n.mailto.is_empty() {
        let from = n
            .from
            .clone()
            .unwrap_or_else(|| format!("hoard@{}", hoard_engine::host_name()));
        let sendmail = n.sendmail.clone().unwrap_or_else(|| "/usr/sbin/sendmail".into());
        if let Err(e) = mail(&sendmail, &from, &n.mailto, summary) {
            failed.push(format!(
                "mail to {}: {}",
                n.mailto.join(", "),
                crate::exit::error_chain(&e)
            ));
        }
    }
    if let Some(url) = &n.webhook {
        if let Err(e) = webhook(url, summary) {
            failed.push(format!("webhook {url}: {}", crate::exit::error_chain(&e)));
        }
    }
    failed
}

/// The mail: headers (addresses were checked to hold no line breaks), the
/// summary table, the log of every guest that did not back up in full.
pub(crate) fn message(from: &str, to: &[String], summary: &Summary) -> String {
    let date = rfc2822_date(summary.started);
    let mut m = format!(
        "From: {from}\nTo: {}\nSubject: hoard job {} on {}: {}\nDate: {date}\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\nAuto-Submitted: auto-generated\n\n",
        to.join(", "),
        summary.job,
        hoard_engine::host_name(),
        summary.headline()
    );
    m.push_str(&summary.table());
    for g in summary.all().filter(|g| g.status != super::summary::Status::Ok) {
        m.push_str(&format!(
            "\nlog of {} ({}):\n{}",
            g.guest,
            g.status.as_str(),
            g.log
        ));
    }
    m
}

fn mail(sendmail: &std::path::Path, from: &str, to: &[String], summary: &Summary) -> Result<()> {
    // -t: recipients from the headers; -oi: a lone "." does not end it.
    let mut child = Command::new(sendmail)
        .args(["-t", "-oi", "-f", from])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", sendmail.display()))?;
    let body = message(from, to, summary);
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(body.as_bytes())
        .with_context(|| format!("writing to {}", sendmail.display()))?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{} exited with {}: {}",
            sendmail.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn webhook(url: &str, summary: &Summary) -> Result<()> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let response = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("User-Agent", concat!("hoard/", env!("CARGO_PKG_VERSION")))
        .body(serde_json::to_vec(&summary.to_json())?)
        .send()?;
    if !response.status().is_success() {
        bail!("answered {}", response.status());
    }
    Ok(())
}

/// RFC 2822 date of a time, in UTC: `Thu, 03 Dec 2026 17:00:00 +0000`.
fn rfc2822_date(t: std::time::SystemTime) -> String {
    // From the RFC 3339 form, which humantime gives without a calendar crate.
    let s = humantime::format_rfc3339_seconds(t).to_string();
    let (y, mo, d) = (&s[0..4], &s[5..7], &s[8..10]);
    let days = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][mo.parse::<usize>().unwrap_or(1).clamp(1, 12) - 1];
    format!("{weekday}, {d} {month} {y} {} +0000", &s[11..19])
}

#[cfg(test)]
mod tests {
    #[test]
    fn mail_dates_are_rfc2822() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_403_600);
        assert_eq!(super::rfc2822_date(t), "Fri, 04 Dec 2026 17:00:00 +0000");
    }
}
