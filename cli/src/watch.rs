//! `kappie watch`: a top view refreshed in place in a terminal UI until q, Esc or Ctrl-C.
//! A fetcher thread asks the collector every interval and hands each answer to the UI
//! thread, which only draws and reads keys, so a slow or absent collector never freezes
//! the screen; failures show on an error line and the last good table stays.

use crate::client::{Client, Error};
use crate::promql::format_duration;
use crate::table::{Align, Table};
use crate::time::{now, utc_parts};
use crate::views::{self, TopOptions, View};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Wrap};
use ratatui::Frame;
use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::Duration;

/// How often the screen is redrawn and keys are read while nothing arrives (the clock in
/// the header moves on).
const TICK: Duration = Duration::from_millis(250);

/// One answer of the fetcher: when it was asked and the table or the error.
struct Answer {
    at: f64,
    result: Result<Table, String>,
}

/// What the screen shows.
struct Screen {
    title: String,
    interval: Duration,
    /// The last good table and when it was asked.
    table: Option<(f64, Table)>,
    /// The last failure, when it is newer than the table.
    error: Option<(f64, String)>,
}

/// Restores the terminal however the UI loop ends (ratatui's panic hook covers panics).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs the UI until the user quits.
pub fn run(client: Client, view: View, opts: TopOptions, interval: Duration) -> Result<(), Error> {
    if !std::io::stdout().is_terminal() {
        return Err(Error::Usage(
            "kappie watch needs a terminal; for scripts use `kappie top` (with -o json)".to_owned(),
        ));
    }
    let title = format!(
        "kappie watch {} · {} · every {}",
        view.name(),
        client.server(),
        format_duration(interval)
    );
    let (answers_tx, answers) = mpsc::channel::<Answer>();
    let (stop, stop_rx) = mpsc::channel::<()>();
    let fetcher = std::thread::spawn(move || loop {
        let at = now();
        let result = views::top(&client, view, &opts)
            .map(|(spec, rows)| views::top_table(&spec, &rows))
            .map_err(|e| e.to_string());
        if answers_tx.send(Answer { at, result }).is_err() {
            return;
        }
        // Ends at once when the UI says stop (or is gone), else after the interval.
        match stop_rx.recv_timeout(interval) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    });

    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    let mut screen = Screen {
        title,
        interval,
        table: None,
        error: None,
    };
    loop {
        while let Ok(a) = answers.try_recv() {
            match a.result {
                Ok(t) => {
                    screen.table = Some((a.at, t));
                    screen.error = None;
                }
                Err(e) => screen.error = Some((a.at, e)),
            }
        }
        terminal.draw(|f| draw(f, &screen))?;
        if event::poll(TICK)? {
            if let Event::Key(k) = event::read()? {
                let ctrl_c =
                    k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if k.kind == KeyEventKind::Press
                    && (ctrl_c || matches!(k.code, KeyCode::Char('q') | KeyCode::Esc))
                {
                    break;
                }
            }
        }
    }
    let _ = stop.send(());
    // The fetcher may be inside a request (bounded by the client's timeouts); not joined,
    // so quitting is immediate. The process exits right after.
    drop(fetcher);
    Ok(())
}

fn hms(t: f64) -> String {
    utc_parts(t).1
}

fn draw(f: &mut Frame, s: &Screen) {
    // An error (with the port-forward hint) gets three lines to wrap into.
    let status_height = if s.error.is_some() { 3 } else { 1 };
    let [header, status, body] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(status_height),
        Constraint::Min(1),
    ])
    .areas(f.area());
    f.render_widget(
        Paragraph::new(Line::from(format!(
            "{} · {} UTC · q to quit",
            s.title,
            hms(now())
        )))
        .style(Style::default().add_modifier(Modifier::BOLD)),
        header,
    );
    let status_line = match (&s.error, &s.table) {
        (Some((at, e)), _) => Line::from(format!(
            "{} error (retrying every {}): {e}",
            hms(*at),
            format_duration(s.interval)
        ))
        .style(Style::default().fg(Color::Red)),
        (None, Some((at, t))) => {
            Line::from(format!("updated {} UTC · {} rows", hms(*at), t.rows.len()))
        }
        (None, None) => Line::from("asking the collector…"),
    };
    f.render_widget(
        Paragraph::new(status_line).wrap(Wrap { trim: true }),
        status,
    );
    let Some((_, t)) = &s.table else {
        return;
    };
    if t.rows.is_empty() {
        f.render_widget(Paragraph::new("no data"), body);
        return;
    }
    let cell = |text: &str, align: Align, style: Style| {
        let line = Line::from(text.to_owned()).style(style);
        Cell::from(match align {
            Align::Left => line,
            Align::Right => line.right_aligned(),
        })
    };
    let head = Row::new(t.columns.iter().map(|c| {
        cell(
            &c.header,
            c.align,
            Style::default().add_modifier(Modifier::BOLD),
        )
    }));
    let rows = t.rows.iter().map(|r| {
        Row::new(r.iter().zip(&t.columns).map(|(c, col)| {
            let style = if c.warn {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            };
            cell(&c.text, col.align, style)
        }))
    });
    let widths: Vec<Constraint> = t
        .widths()
        .into_iter()
        .map(|w| Constraint::Length(w as u16))
        .collect();
    f.render_widget(
        ratatui::widgets::Table::new(rows, widths)
            .header(head)
            .column_spacing(2),
        body,
    );
}
