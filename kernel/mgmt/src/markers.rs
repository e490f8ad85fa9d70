//! Console markers: fixed lines the lab and tests wait for. Changing one is an
//! interface change (scripts match them).

/// Printed once the main loop runs and the console accepts commands.
pub const READY: &str = "DUPLEX READY";
/// The console prompt (after every command's output).
pub const PROMPT: &str = "duplex> ";
/// Starts the line of a CPU exception report.
pub const EXCEPTION: &str = "*** CPU EXCEPTION";
/// Starts the line of a panic report.
pub const PANIC: &str = "*** PANIC";
/// Starts an error line of a console command.
pub const ERROR: &str = "error: ";
/// The first line the image prints, before anything else is set up.
pub const BANNER: &str = "Duplex appliance";
