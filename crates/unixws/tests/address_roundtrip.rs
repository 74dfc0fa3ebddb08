//! Property tests: every valid address displays as text that parses back to
//! the same address, and no input string makes the parser panic.

use proptest::prelude::*;
use unixws::{Address, Endpoint};

fn path_strategy() -> impl Strategy<Value = String> {
    // Socket paths with the characters that need escaping in ws+unix:// URLs.
    let prefix = prop_oneof![Just("/"), Just("./"), Just("../"), Just("/tmp/"), Just("@")];
    (prefix, "[a-zA-Z0-9_.:%?#@ é-]{1,40}").prop_map(|(p, rest)| format!("{p}{rest}"))
}

fn resource_strategy() -> impl Strategy<Value = String> {
    let path = "(/[a-zA-Z0-9_.~:@!$&'()*+,;=-]{0,12}){1,3}";
    let query = proptest::option::of("[a-zA-Z0-9_=&%.-]{0,16}");
    (path, query).prop_map(|(p, q)| match q {
        Some(q) => format!("{p}?{q}"),
        None => p,
    })
}

fn endpoint_strategy() -> impl Strategy<Value = Endpoint> {
    prop_oneof![
        path_strategy().prop_map(|p| Endpoint::Path(p.into())),
        "[a-zA-Z0-9_.:%?#/ -]{1,40}".prop_map(Endpoint::Abstract),
        ("[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,6})?", any::<u16>())
            .prop_map(|(host, port)| Endpoint::Tcp { host, port }),
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| Endpoint::Tcp {
            host: std::net::Ipv4Addr::from(ip).to_string(),
            port
        }),
        (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, port)| Endpoint::Tcp {
            host: std::net::Ipv6Addr::from(ip).to_string(),
            port
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn display_parses_back_to_the_same_address(endpoint in endpoint_strategy(), resource in resource_strategy()) {
        let addr = Address::new(endpoint, resource).expect("generated addresses are valid");
        let text = addr.to_string();
        let back: Address = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        prop_assert_eq!(back, addr);
    }

    #[test]
    fn parser_never_panics(input in "\\PC{0,200}") {
        if let Err(e) = input.parse::<Address>() {
            // Errors are one line and name the input.
            let msg = e.to_string();
            prop_assert!(!msg.contains('\n'));
        }
    }
}
