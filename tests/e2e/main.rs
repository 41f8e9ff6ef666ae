//! End-to-end tests: real plugins built from source (tests/artifacts), the
//! real `rewind` binary, real processes, files, SQLite databases and HTTP
//! servers on loopback. One binary, split by topic; helpers in `util`.

mod util;

mod bad_input;
mod demo;
mod drills;
mod golden;
mod hostile_limits;
mod hostile_output;
mod hostile_paths;
mod imports;
mod limits;
mod reports;
mod restore;
mod runs;
mod sandbox;
mod status;
mod watch;
