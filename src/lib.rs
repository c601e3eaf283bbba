//! Facade: re-exports the core and the bundled adapters.
pub use exportcore;
pub use exportcore_json;
