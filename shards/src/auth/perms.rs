//! Topic permissions: which topics and patterns a connection may subscribe to, decided at
//! subscribe time (never per message). Pure, any thread. docs/security.md, "Permissions".
//!
//! A connection's permissions are the union of the `anonymous_topics` patterns, the token's
//! `topics` claim and the patterns of its roles (`[auth.roles]`), with one exception: the
//! private namespace (`private_prefix`, default `user`). `user.<sub>` and `user.<sub>.…`
//! belong to the user `<sub>`: a token may always read its own, another user's only through a
//! role listed in `private_read_roles`, and no pattern reaches into them (`user.*`, or a
//! pattern over a prefix that contains the private prefix) without such a role.

use crate::topic::{parse_selector, validate_topic, Selector};

impl std::fmt::Display for Perm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Perm::All => f.write_str("*"),
            Perm::Prefix(p) => write!(f, "{p}.*"),
            Perm::Topic(t) => f.write_str(t),
        }
    }
}

/// One permission pattern: `*` (every topic outside the private namespace), `prefix.*`
/// (every topic under `prefix`, and every pattern under it), or an exact topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Perm {
    /// `*`: every topic and pattern outside the private namespace.
    All,
    /// `prefix.*`, holding the prefix.
    Prefix(Box<str>),
    /// One topic.
    Topic(Box<str>),
}

impl Perm {
    /// Parses a permission pattern: `*`, `prefix.*` or a topic name (docs/protocol.md,
    /// "Topic names"). Errors say what is wrong, for configuration and claim errors.
    pub fn parse(text: &str) -> Result<Perm, String> {
        if text == "*" {
            return Ok(Perm::All);
        }
        match parse_selector(text) {
            Ok(Selector::Topic(t)) => Ok(Perm::Topic(t.into())),
            Ok(Selector::Prefix(p)) => Ok(Perm::Prefix(p.into())),
            Err(e) => Err(format!("{text:?} is not a topic, `prefix.*` or `*`: {e}")),
        }
    }

    /// Parses a list of patterns; the first bad one is the error.
    pub fn parse_all(texts: &[String]) -> Result<Vec<Perm>, String> {
        texts.iter().map(|t| Perm::parse(t)).collect()
    }

    /// True when this permission covers `selector`: a topic is covered by `*`, by itself
    /// and by a pattern over a prefix of it; a pattern by `*` and by an equal or wider pattern.
    fn covers(&self, selector: Selector<'_>) -> bool {
        match (self, selector) {
            (Perm::All, _) => true,
            (Perm::Topic(p), Selector::Topic(t)) => **p == *t,
            (Perm::Topic(_), Selector::Prefix(_)) => false,
            (Perm::Prefix(p), Selector::Topic(t) | Selector::Prefix(t)) => under(t, p),
        }
    }
}

/// True when `name` is `prefix` itself or a name under it (`prefix.…`).
fn under(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// The private namespace's rule (`private_prefix`): who owns a topic or pattern in it.
#[derive(Debug, Clone)]
pub struct Private {
    prefix: Box<str>,
}

/// Where a selector stands with respect to the private namespace.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Owner<'a> {
    /// Outside it: the ordinary permissions decide.
    Public,
    /// Inside the namespace of the user named.
    User(&'a str),
    /// Covers several users' namespaces (`user.*`, or a pattern over a prefix that holds
    /// the private prefix).
    Everyone,
}

impl Private {
    /// The namespace `prefix` (a valid topic name; checked by the configuration).
    pub fn new(prefix: &str) -> Result<Private, String> {
        validate_topic(prefix)
            .map_err(|e| format!("auth.private_prefix {prefix:?} is not a topic prefix: {e}"))?;
        Ok(Private {
            prefix: prefix.into(),
        })
    }

    /// The namespace's prefix (`user`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// True when `perm` covers a topic of the private namespace.
    pub fn reaches(&self, perm: &Perm) -> bool {
        match perm {
            Perm::All => false, // `*` is defined as everything outside it
            Perm::Topic(t) => self.owner(Selector::Topic(t)) != Owner::Public,
            Perm::Prefix(p) => self.owner(Selector::Prefix(p)) != Owner::Public,
        }
    }

    pub(crate) fn owner<'a>(&self, selector: Selector<'a>) -> Owner<'a> {
        let (name, pattern) = match selector {
            Selector::Topic(t) => (t, false),
            Selector::Prefix(p) => (p, true),
        };
        if let Some(rest) = name.strip_prefix(&*self.prefix) {
            if rest.is_empty() {
                // `user` as a topic is nobody's; `user.*` covers everyone.
                return if pattern {
                    Owner::Everyone
                } else {
                    Owner::Public
                };
            }
            if let Some(rest) = rest.strip_prefix('.') {
                let user = rest.split('.').next().unwrap_or(rest);
                return Owner::User(user);
            }
            return Owner::Public; // `users.x` is not under `user`
        }
        if pattern && under(&self.prefix, name) {
            return Owner::Everyone; // `acct.*` over the private prefix `acct.user`
        }
        Owner::Public
    }
}

/// What one connection may subscribe to. Built once per token (or once for anonymous
/// connections) and consulted only at subscribe time.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    /// Patterns outside the private namespace.
    pub(crate) perms: Vec<Perm>,
    /// The user whose private namespace this is (`None` for an anonymous connection).
    pub(crate) sub: Option<Box<str>>,
    /// A role of `private_read_roles`: every user's private namespace is readable.
    pub(crate) private_read: bool,
}

impl Permissions {
    /// True when a subscription to `selector` is allowed.
    pub fn allows(&self, private: &Private, selector: Selector<'_>) -> bool {
        match private.owner(selector) {
            Owner::Public => self.perms.iter().any(|p| p.covers(selector)),
            Owner::User(u) => self.private_read || self.sub.as_deref() == Some(u),
            Owner::Everyone => self.private_read,
        }
    }

    /// True when `self` allows everything `before` did: a refresh that keeps the same
    /// permissions changes no subscription.
    pub fn same_as(&self, before: &Permissions) -> bool {
        self.perms == before.perms
            && self.sub == before.sub
            && self.private_read == before.private_read
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Selector<'_> {
        parse_selector(s).unwrap()
    }

    fn user(sub: &str, perms: &[&str], private_read: bool) -> Permissions {
        Permissions {
            perms: perms.iter().map(|p| Perm::parse(p).unwrap()).collect(),
            sub: Some(sub.into()),
            private_read,
        }
    }

    #[test]
    fn patterns_cover_topics_and_narrower_patterns() {
        let p = Private::new("user").unwrap();
        let a = user("alice", &["trades.*", "ticker.BTC-USD"], false);
        assert!(a.allows(&p, sel("trades.BTC-USD")));
        assert!(a.allows(&p, sel("trades.spot.*")));
        assert!(a.allows(&p, sel("trades.*")));
        assert!(a.allows(&p, sel("ticker.BTC-USD")));
        assert!(!a.allows(&p, sel("ticker.ETH-USD")));
        assert!(!a.allows(&p, sel("ticker.*")));
        assert!(!a.allows(&p, sel("tradesX.a")));
    }

    #[test]
    fn the_private_namespace_is_the_owners_alone() {
        let p = Private::new("user").unwrap();
        let a = user("alice", &["*"], false);
        assert!(a.allows(&p, sel("user.alice")));
        assert!(a.allows(&p, sel("user.alice.orders")));
        assert!(a.allows(&p, sel("user.alice.*")));
        assert!(!a.allows(&p, sel("user.bob.orders")));
        assert!(!a.allows(&p, sel("user.bob.*")));
        assert!(!a.allows(&p, sel("user.*")), "`*` never reaches users");
        assert!(a.allows(&p, sel("users.bob")), "another prefix");
        let colon = user("desk:7-a", &[], false);
        assert!(colon.allows(&p, sel("user.desk:7-a.orders")));
        assert!(!colon.allows(&p, sel("user.desk:7-b.orders")));
        assert!(p.reaches(&Perm::parse("user.*").unwrap()));
        assert!(p.reaches(&Perm::parse("user.bob").unwrap()));
        assert!(!p.reaches(&Perm::parse("users.*").unwrap()));
        assert!(!p.reaches(&Perm::All));
        let admin = user("ops", &[], true);
        assert!(admin.allows(&p, sel("user.*")));
        assert!(admin.allows(&p, sel("user.bob.orders")));
        let anonymous = Permissions {
            perms: vec![Perm::All],
            sub: None,
            private_read: false,
        };
        assert!(!anonymous.allows(&p, sel("user.alice")));
        assert!(anonymous.allows(&p, sel("book.BTC-USD")));
    }

    #[test]
    fn a_pattern_over_a_nested_private_prefix_is_everyones() {
        let p = Private::new("acct.user").unwrap();
        let a = user("alice", &["acct.*"], false);
        assert!(!a.allows(&p, sel("acct.*")));
        assert!(a.allows(&p, sel("acct.balances")));
        assert!(a.allows(&p, sel("acct.user.alice.fills")));
        assert!(!a.allows(&p, sel("acct.user.bob.fills")));
    }

    #[test]
    fn bad_patterns_are_named() {
        assert!(Perm::parse("a.*.b").is_err());
        assert!(Perm::parse("").is_err());
        assert!(Perm::parse("a b").is_err());
        assert_eq!(Perm::parse("*").unwrap(), Perm::All);
    }
}
