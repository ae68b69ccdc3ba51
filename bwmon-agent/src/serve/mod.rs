//! What bwmon serves while it runs: the control socket (root's CLI), the tenant socket (each
//! user their own slice), the Prometheus endpoint, and the documents they answer with.

pub(crate) mod connections;
pub mod control;
pub(crate) mod metrics;
pub(crate) mod slice_view;
pub(crate) mod status;
pub(crate) mod table;
