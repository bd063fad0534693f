//! System tests of the engine through the OPC UA adapter: see `tests/`.
//! This crate ships nothing; it exists so that tests which need the core,
//! the OPC UA adapter and the simulator together live where all three can
//! be seen, and `collector-core` depends on no protocol, not even in tests.
