
pub mod dataplane;
