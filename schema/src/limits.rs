//! Bounds on everything read from outside: files, directories, YAML documents and their
//! alias expansion, selectors. A git-synced directory, standard input and etcd are all
//! written by someone else; without bounds one hostile file (a "billion laughs" of
//! nested aliases, a multi-gigabyte document) takes down `calicoctl`, the sync and the
//! master. Each limit is far above what a real cluster writes (docs/security.md gives
//! the table) and each refusal names the file, line and column.

/// Bytes of one YAML file (or of standard input).
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes of all the YAML files of one directory (`-f DIR`, a sync directory).
pub const MAX_DIR_BYTES: u64 = 64 * 1024 * 1024;
/// YAML files in one directory tree.
pub const MAX_DIR_FILES: usize = 20_000;
/// Documents in one file: 10k resources in one file stay well inside it.
pub const MAX_DOCUMENTS_PER_FILE: usize = 50_000;
/// Nodes (scalars, sequences, mappings) in one document, with every alias counted as
/// the nodes it expands to. The largest valid resource (a Policy with hundreds of rules
/// of 256 nets and 50 ports each) is about this size.
pub const MAX_NODES_PER_DOCUMENT: usize = 200_000;
/// Nodes in one file, aliases expanded: bounds memory at about 100 bytes a node.
pub const MAX_NODES_PER_FILE: usize = 2_000_000;
/// Nesting depth of YAML collections; resources nest about eight deep.
pub const MAX_DEPTH: usize = 64;
/// Bytes of one selector expression.
pub const MAX_SELECTOR_BYTES: usize = 4096;
/// Levels of `(` or `!` in one selector: deeper input would overflow the stack of the
/// recursive-descent parser (or of the evaluator and destructor).
pub const MAX_SELECTOR_DEPTH: usize = 100;
/// Bytes of one value read from etcd (a resource, an IPAM block or handle). etcd's own
/// default request limit is 1.5 MiB; a larger value was written around calicoctl.
pub const MAX_ETCD_VALUE_BYTES: usize = 1024 * 1024;
/// Rules in one direction (ingress or egress) of a Group or Policy. A rule costs a few
/// nft rules per endpoint it applies to; a thousand is far past any real policy.
pub const MAX_RULES_PER_DIRECTION: usize = 1000;
/// Ports (or port ranges) in one `ports` or `notPorts` list of a rule.
pub const MAX_PORTS_PER_LIST: usize = 50;
/// Nets in one `nets` or `notNets` list of a rule.
pub const MAX_NETS_PER_LIST: usize = 256;
