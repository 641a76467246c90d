//! Tessera engine
