//! What bwmon serves while it runs: the control socket (root's CLI), the tenant socket (each
//! user their own slice), the Prometheus endpoint, and the documents they answer with.

pub mod connections;
pub mod control;
pub mod metrics;
pub mod slice_view;
pub mod status;
