//! A QEMU Machine Protocol client over a unix socket.
//!
//! A reader thread splits QEMU's output into command replies (handed to the waiting
//! `execute`) and asynchronous events (kept, with their arrival time, for
//! [`Qmp::wait_event`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Result, lab_error};

/// An event QEMU sent.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its name (`STOP`, `RESUME`, `SHUTDOWN`, `RESET`, `WATCHDOG`...).
    pub name: String,
    /// Its data object.
    pub data: Value,
    /// When the lab received it.
    pub received: Instant,
}

#[derive(Default)]
struct Events {
    list: Vec<Event>,
    closed: bool,
}

/// A connected QMP session (capabilities negotiated).
pub struct Qmp {
    writer: UnixStream,
    replies: Receiver<Value>,
    events: Arc<(Mutex<Events>, Condvar)>,
}

impl Qmp {
    /// Takes over a connected stream: reads the greeting, negotiates capabilities.
    pub fn new(stream: UnixStream, timeout: Duration) -> Result<Qmp> {
        let reader = stream.try_clone()?;
        let (reply_tx, replies) = channel();
        let events: Arc<(Mutex<Events>, Condvar)> = Arc::default();
        let events_in = Arc::clone(&events);
        std::thread::Builder::new()
            .name("qmp-reader".into())
            .spawn(move || {
                let mut lines = BufReader::new(reader).lines();
                while let Some(Ok(line)) = lines.next() {
                    let Ok(value) = serde_json::from_str::<Value>(&line) else {
                        continue;
                    };
                    if let Some(name) = value.get("event").and_then(Value::as_str) {
                        let event = Event {
                            name: name.to_string(),
                            data: value.get("data").cloned().unwrap_or(Value::Null),
                            received: Instant::now(),
                        };
                        let (lock, cond) = &*events_in;
                        lock.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .list
                            .push(event);
                        cond.notify_all();
                    } else if reply_tx.send(value).is_err() {
                        break;
                    }
                }
                let (lock, cond) = &*events_in;
                lock.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
                cond.notify_all();
            })?;
        let mut qmp = Qmp {
            writer: stream,
            replies,
            events,
        };
        // The greeting comes as the first "reply".
        let greeting = qmp.next_reply(timeout)?;
        if greeting.get("QMP").is_none() {
            return Err(lab_error!("unexpected QMP greeting: {greeting}"));
        }
        qmp.execute("qmp_capabilities", None, timeout)?;
        Ok(qmp)
    }

    fn next_reply(&self, timeout: Duration) -> Result<Value> {
        match self.replies.recv_timeout(timeout) {
            Ok(v) => Ok(v),
            Err(RecvTimeoutError::Timeout) => Err(lab_error!("QMP: no reply within {timeout:?}")),
            Err(RecvTimeoutError::Disconnected) => {
                Err(lab_error!("QMP: QEMU closed the connection"))
            }
        }
    }

    /// Runs a command and returns its `return` value (or its error as an `Err`).
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| lab_error!("QMP: cannot send '{command}': {e}"))?;
        let reply = self.next_reply(timeout)?;
        if let Some(error) = reply.get("error") {
            return Err(lab_error!("QMP '{command}' failed: {error}"));
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    /// Waits for an event named `name` received at or after `since`.
    pub fn wait_event(&self, name: &str, since: Instant, timeout: Duration) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.events;
        let mut events = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = events
                .list
                .iter()
                .find(|e| e.name == name && e.received >= since)
            {
                return Ok(e.clone());
            }
            if events.closed {
                return Err(lab_error!("QMP closed before event {name}"));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(lab_error!("no QMP event {name} within {timeout:?}"));
            }
            events = cond
                .wait_timeout(events, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .clone()
    }
}
