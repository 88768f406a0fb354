//! Raw API misuse made on purpose by tests of other things (the engine's
//! refusals, its counters, a shadow model's errors). With the misuse
//! checker built in (`--features checker`, as `--all-features` builds
//! every test) each such call is also a finding; here it is checked
//! rather than reported, whose default is a panic.

/// Runs `f`, which misuses the raw API on purpose. With the checker, the
/// findings `f` makes on this thread are kept from the handler and must be
/// exactly `kinds` (their `FindingKind` names, in order); without it, this
/// only runs `f`.
#[track_caller]
pub fn expect_misuse<R>(kinds: &[&str], f: impl FnOnce() -> R) -> R {
    #[cfg(all(feature = "checker", feature = "std"))]
    {
        let (r, found) = swiotlb::checker::collect(f);
        let names: Vec<String> = found.iter().map(|f| format!("{:?}", f.kind())).collect();
        assert_eq!(names, kinds, "the checker's findings");
        r
    }
    #[cfg(not(all(feature = "checker", feature = "std")))]
    {
        let _ = kinds;
        f()
    }
}
