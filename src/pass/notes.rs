//! What a pass finds worth logging, as plain data: the plan's stages are
//! pure and log nothing; each returns [`Note`]s, and the caller decides
//! whether to log them (`run` does, `status` and `plan` do not).

use log::Level;

/// A log line the pass is worth (the caller decides whether to log it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Its level.
    pub level: Level,
    /// Its text.
    pub text: String,
}

/// Adds a note.
pub fn note(notes: &mut Vec<Note>, level: Level, text: String) {
    notes.push(Note { level, text });
}
