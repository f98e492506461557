//! The sans-IO client session (being written).
