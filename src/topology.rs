//! The topology file: YAML model, defaults, validation and the resolved plan.
