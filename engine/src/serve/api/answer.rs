//! What the server answers: a reply, or a refusal with its status and
//! message; and the snapshot names requests carry, parsed with the
//! refusal a bad one earns.

use hyper::StatusCode;

use crate::error::{Classify, ErrorKind};
use crate::format::snapshot::{valid_time, validate_id, Kind, SnapshotName};

/// The largest manifest or small object a client may send.
pub(super) const MAX_SMALL_BODY: usize = 16 << 20;

/// A successful answer.
pub(super) enum Reply {
    Json(serde_json::Value),
    Bytes(Vec<u8>),
}

/// A refused request: its status and why.
#[derive(Debug)]
pub(super) struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

pub(super) fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

pub(super) fn bad(message: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, message)
}

impl<E: Classify> From<E> for Refusal {
    fn from(e: E) -> Refusal {
        let status = match e.kind() {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Busy => StatusCode::CONFLICT,
            ErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Auth => StatusCode::FORBIDDEN,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        refuse(status, e.to_string())
    }
}

pub(super) fn snapshot_name(kind: &str, id: &str, time: &str) -> Result<SnapshotName, Refusal> {
    let kind: Kind = kind
        .parse()
        .map_err(|_| bad(format!("{kind:?} is not a snapshot kind")))?;
    validate_id(id)?;
    if !valid_time(time) {
        return Err(bad(format!(
            "{time:?} is not a snapshot time (YYYY-MM-DDTHH:MM:SSZ)"
        )));
    }
    Ok(SnapshotName {
        kind,
        id: id.to_string(),
        time: time.to_string(),
    })
}
