//! `both_policies!`: runs a generic test under each shipped policy.

/// Runs each generic test `name::<P>()` under each policy, as
/// `<name>::fast` and `<name>::nextfit`.
macro_rules! both_policies {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[test]
            fn fast() {
                super::$name::<swiotlb::Fast>();
            }
            #[test]
            fn nextfit() {
                super::$name::<swiotlb::NextFit>();
            }
        })*
    };
}
