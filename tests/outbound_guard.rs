//! WH-7 end to end: the guarded client against real receivers that count the
//! requests they get. A binary of its own: it needs no store and no server,
//! so it links without them and runs in a second.
//!
//! The suite itself must be safe even if the guard were broken: every address
//! a test can connect to is on loopback. Names resolve through `Names`, which
//! only maps to loopback; "refused" targets are 127.0.0.2 with only
//! 127.0.0.1/32 allowlisted, so a broken guard shows up as a request counted
//! by a receiver, never as a packet on another network.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hookflow::outbound::{Refused, TargetPolicy, UnsafeRange, UrlProblem, client, refusal_in};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

const ALLOWED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const REFUSED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// A receiver on a loopback address that answers every request the same way
/// and counts them.
struct Receiver {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Receiver {
    /// Answers 200.
    async fn ok(ip: Ipv4Addr) -> Self {
        Self::start(ip, None).await
    }

    /// Answers 301 to `location`.
    async fn redirecting(ip: Ipv4Addr, location: String) -> Self {
        Self::start(ip, Some(location)).await
    }

    async fn start(ip: Ipv4Addr, location: Option<String>) -> Self {
        assert!(ip.is_loopback(), "test receivers listen on loopback only");
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let app = Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let answer: Response = match location.clone() {
                None => StatusCode::OK.into_response(),
                Some(to) => {
                    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, to)]).into_response()
                }
            };
            async move { answer }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver") });
        Self { addr, hits }
    }

    /// This receiver's URL with `host` in place of its address.
    fn url_as(&self, host: &str) -> String {
        format!("http://{host}:{}/", self.addr.port())
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// The injected resolver: fixed names, loopback only.
struct Names(HashMap<&'static str, Ipv4Addr>);

/// A resolver that knows `names` and nothing else.
fn resolving(names: &[(&'static str, Ipv4Addr)]) -> Arc<dyn Resolve> {
    assert!(
        names.iter().all(|(_, ip)| ip.is_loopback()),
        "test names resolve to loopback only"
    );
    Arc::new(Names(names.iter().copied().collect()))
}

impl Resolve for Names {
    fn resolve(&self, name: Name) -> Resolving {
        let found = self.0.get(name.as_str()).copied();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let ip = found.ok_or_else(|| format!("no such test name: {name}"))?;
            Ok(Box::new(std::iter::once(SocketAddr::new(IpAddr::V4(ip), 0))) as Addrs)
        })
    }
}

fn policy(allow: &[&str]) -> Arc<TargetPolicy> {
    Arc::new(TargetPolicy {
        allow: allow.iter().map(|n| n.parse().expect("a net")).collect(),
    })
}

fn guarded(policy: &Arc<TargetPolicy>, names: &Arc<dyn Resolve>, follow: usize) -> reqwest::Client {
    client(
        Arc::clone(policy),
        Arc::clone(names),
        follow,
        Duration::from_millis(500),
    )
    .expect("client")
}

/// What the delivery engine does: the per-request check, then the send.
async fn deliver(
    client: &reqwest::Client,
    policy: &TargetPolicy,
    url: &str,
) -> Result<reqwest::Response, Box<dyn std::error::Error>> {
    let url = reqwest::Url::parse(url)?;
    policy.check_target(&url)?;
    Ok(client.post(url).body("{}").send().await?)
}

fn refusal(error: &(dyn std::error::Error + 'static)) -> Refused {
    *refusal_in(error).unwrap_or_else(|| panic!("not a refusal: {error:?}"))
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_and_nothing_is_sent() {
    let receiver = Receiver::ok(ALLOWED).await;
    let names = resolving(&[("receiver.test", ALLOWED)]);
    let policy = policy(&[]);
    let error = deliver(
        &guarded(&policy, &names, 0),
        &policy,
        &receiver.url_as("receiver.test"),
    )
    .await
    .expect_err("loopback is refused");
    assert_eq!(
        refusal(&*error),
        Refused {
            ip: IpAddr::V4(ALLOWED),
            range: UnsafeRange::Loopback
        }
    );
    assert_eq!(receiver.hits(), 0);
}

#[tokio::test]
async fn an_allowlisted_range_lets_a_name_reach_loopback() {
    let receiver = Receiver::ok(ALLOWED).await;
    let names = resolving(&[("receiver.test", ALLOWED)]);
    let policy = policy(&["127.0.0.0/8"]);
    let response = deliver(
        &guarded(&policy, &names, 0),
        &policy,
        &receiver.url_as("receiver.test"),
    )
    .await
    .expect("allowlisted");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(receiver.hits(), 1);
}

#[tokio::test]
async fn a_literal_loopback_url_is_refused_before_sending() {
    let receiver = Receiver::ok(REFUSED).await;
    let names = resolving(&[]);
    let policy = policy(&["127.0.0.1/32"]);
    let error = deliver(&guarded(&policy, &names, 0), &policy, &receiver.url())
        .await
        .expect_err("127.0.0.2 is not allowlisted");
    assert_eq!(
        refusal(&*error),
        Refused {
            ip: IpAddr::V4(REFUSED),
            range: UnsafeRange::Loopback
        }
    );
    assert_eq!(receiver.hits(), 0);
    assert!(
        policy.check_url(&receiver.url()).is_err(),
        "refused at save time too"
    );
}

/// Why `check_target` runs before every send: reqwest connects to a literal IP
/// without asking the resolver. If this starts failing, reqwest changed and the
/// resolver guards literal hosts too; the per-request check can stay.
#[tokio::test]
async fn the_client_alone_does_not_check_literal_ip_hosts() {
    let receiver = Receiver::ok(REFUSED).await;
    let policy = policy(&["127.0.0.1/32"]);
    let sent = guarded(&policy, &resolving(&[]), 0)
        .get(receiver.url())
        .send()
        .await;
    assert_eq!(sent.expect("sent unchecked").status(), StatusCode::OK);
    assert_eq!(receiver.hits(), 1);
}

#[tokio::test]
async fn redirects_are_not_followed_unless_the_webhook_opts_in() {
    let target = Receiver::ok(ALLOWED).await;
    let first = Receiver::redirecting(ALLOWED, target.url()).await;
    let names = resolving(&[]);
    let policy = policy(&["127.0.0.1/32"]);
    let response = deliver(&guarded(&policy, &names, 0), &policy, &first.url())
        .await
        .expect("the 301 is the answer");
    assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(response.headers()[header::LOCATION], target.url().as_str());
    assert_eq!((first.hits(), target.hits()), (1, 0));
}

#[tokio::test]
async fn an_opted_in_redirect_is_followed_up_to_its_limit() {
    let last = Receiver::ok(ALLOWED).await;
    let middle = Receiver::redirecting(ALLOWED, last.url_as("last.test")).await;
    let first = Receiver::redirecting(ALLOWED, middle.url()).await;
    let names = resolving(&[("last.test", ALLOWED)]);
    let policy = policy(&["127.0.0.1/32"]);

    let one_hop = deliver(&guarded(&policy, &names, 1), &policy, &first.url()).await;
    assert_eq!(
        one_hop.expect("stopped").status(),
        StatusCode::MOVED_PERMANENTLY
    );
    assert_eq!((first.hits(), middle.hits(), last.hits()), (1, 1, 0));

    let two_hops = deliver(&guarded(&policy, &names, 2), &policy, &first.url()).await;
    assert_eq!(two_hops.expect("followed").status(), StatusCode::OK);
    assert_eq!((first.hits(), middle.hits(), last.hits()), (2, 2, 1));
}

#[tokio::test]
async fn an_opted_in_redirect_to_a_name_resolving_to_a_refused_address_is_not_followed() {
    let refused = Receiver::ok(REFUSED).await;
    let first = Receiver::redirecting(ALLOWED, refused.url_as("internal.test")).await;
    let names = resolving(&[("internal.test", REFUSED)]);
    let policy = policy(&["127.0.0.1/32"]);
    let error = deliver(&guarded(&policy, &names, 5), &policy, &first.url())
        .await
        .expect_err("the hop is refused");
    assert_eq!(
        refusal(&*error),
        Refused {
            ip: IpAddr::V4(REFUSED),
            range: UnsafeRange::Loopback
        }
    );
    assert_eq!((first.hits(), refused.hits()), (1, 0));
}

#[tokio::test]
async fn an_opted_in_redirect_to_a_refused_literal_address_is_not_followed() {
    let refused = Receiver::ok(REFUSED).await;
    let first = Receiver::redirecting(ALLOWED, refused.url()).await;
    let policy = policy(&["127.0.0.1/32"]);
    let error = deliver(&guarded(&policy, &resolving(&[]), 5), &policy, &first.url())
        .await
        .expect_err("the hop is refused");
    assert_eq!(
        refusal(&*error),
        Refused {
            ip: IpAddr::V4(REFUSED),
            range: UnsafeRange::Loopback
        }
    );
    assert_eq!((first.hits(), refused.hits()), (1, 0));
}

#[tokio::test]
async fn an_opted_in_redirect_to_another_scheme_is_not_followed() {
    // reqwest itself stops at a location without an authority (`file:///…`);
    // `ftp://` on an allowlisted address reaches the redirect policy.
    let first = Receiver::redirecting(ALLOWED, "ftp://127.0.0.1:21/".to_owned()).await;
    let policy = policy(&["127.0.0.1/32"]);
    let error = deliver(&guarded(&policy, &resolving(&[]), 5), &policy, &first.url())
        .await
        .expect_err("the hop is refused");
    let problem = std::iter::successors(Some(&*error as &dyn std::error::Error), |e| e.source())
        .find_map(|e| e.downcast_ref::<UrlProblem>());
    assert_eq!(problem, Some(&UrlProblem::Scheme("ftp".to_owned())));
    assert!(refusal_in(&*error).is_none(), "not an address refusal");
}
