//! A shard-aware client: it learns the appliance's LEU map from one `Stats` request and
//! then sends each point's writes and reads straight to the LEU that owns it, on that LEU's
//! own port, so the dataplane never hands them between cores.
//!
//! Every LEU reports, among its stats counters, `port` (its own port), `leus` and `vnodes`
//! (the ring's parameters). The client rebuilds the same [`Ring`] (a pure function of the
//! two counts, see [`crate::routing`]), opens one [`Client`] per LEU on the host it first
//! reached, and splits each batch by owner: the parts go out pipelined and their answers
//! are summed (writes) or put back in request order (get). A write that failed on some LEUs
//! only is [`ClientError::Partial`], as the server answers a write it split itself. Searches
//! and everything else go to the LEUs in turn; the LEU that reads a search gathers it from
//! all of them.

use crate::client::{Client, ClientError, ClientOptions};
use crate::codec::{Request, Response};
use crate::header::Opcode;
use crate::message::{Delete, Get, Hit, PointRecord, Search, Upsert};
use crate::routing::Ring;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A client with one connection per LEU, routing points to their owners.
#[derive(Debug)]
pub struct ShardedClient {
    ring: Ring,
    leus: Vec<Client>,
    addresses: Vec<SocketAddr>,
    next: AtomicUsize,
}

fn no_map(detail: impl Into<String>) -> ClientError {
    ClientError::NoMap(detail.into())
}

impl ShardedClient {
    /// Connects to `endpoint` (any of the appliance's ports), learns the LEU map and
    /// connects to every LEU's own port on the same host.
    pub fn connect(endpoint: &str, options: ClientOptions) -> Result<ShardedClient, ClientError> {
        let first = Client::connect(&[endpoint], options)?;
        let host = first
            .connected_endpoint()
            .ok_or_else(|| no_map("the first connection has no address"))?
            .ip();
        let stats = first.stats()?;
        let counter = |leu: usize, name: &str| -> Result<u64, ClientError> {
            stats[leu].counter(name).ok_or_else(|| {
                no_map(format!(
                    "LEU {} reports no `{name}` counter (a server older than the LEU map)",
                    stats[leu].leu
                ))
            })
        };
        if stats.is_empty() {
            return Err(no_map("the server reported no LEU"));
        }
        let leus = usize::try_from(counter(0, "leus")?).map_err(|_| no_map("`leus` too large"))?;
        let vnodes =
            u16::try_from(counter(0, "vnodes")?).map_err(|_| no_map("`vnodes` too large"))?;
        if stats.len() != leus
            || stats
                .iter()
                .enumerate()
                .any(|(i, s)| usize::from(s.leu) != i)
        {
            return Err(no_map(format!(
                "the server says {leus} LEUs but reported {} entries",
                stats.len()
            )));
        }
        let ring = Ring::new(leus, vnodes).map_err(|error| no_map(error.to_string()))?;
        let mut addresses = Vec::with_capacity(leus);
        let mut clients = Vec::with_capacity(leus);
        for leu in 0..leus {
            let port = u16::try_from(counter(leu, "port")?)
                .map_err(|_| no_map(format!("LEU {leu}'s port is out of range")))?;
            let address = SocketAddr::new(host, port);
            clients.push(Client::connect(&[address.to_string()], options)?);
            addresses.push(address);
        }
        Ok(ShardedClient {
            ring,
            leus: clients,
            addresses,
            next: AtomicUsize::new(0),
        })
    }

    /// The placement of points on LEUs.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// LEU `leu`'s own address.
    pub fn address(&self, leu: usize) -> Option<SocketAddr> {
        self.addresses.get(leu).copied()
    }

    /// The connection to LEU `leu`.
    pub fn leu(&self, leu: usize) -> Option<&Client> {
        self.leus.get(leu)
    }

    /// A connection for a request any LEU can take (the LEUs in turn).
    pub fn any(&self) -> &Client {
        let leu = self.next.fetch_add(1, Ordering::Relaxed) % self.leus.len();
        &self.leus[leu]
    }

    /// Each owner LEU's share of `ids`: its positions in `ids`.
    fn split(&self, ids: &[u64]) -> Vec<(usize, Vec<usize>)> {
        let mut parts: Vec<Vec<usize>> = vec![Vec::new(); self.leus.len()];
        for (position, &id) in ids.iter().enumerate() {
            parts[self.ring.leu_of(id)].push(position);
        }
        parts
            .into_iter()
            .enumerate()
            .filter(|(_, positions)| !positions.is_empty())
            .collect()
    }

    /// Sends one request per part, all before waiting, and returns the answers in order.
    fn scatter(&self, parts: Vec<(usize, Request)>) -> Result<Vec<Response>, ClientError> {
        let pending = parts
            .iter()
            .map(|(leu, request)| self.leus[*leu].send(request))
            .collect::<Result<Vec<_>, _>>()?;
        pending.into_iter().map(|p| p.wait()).collect()
    }

    /// Upserts a batch, each point on its owner LEU; returns the points written.
    pub fn upsert(&self, upsert: Upsert) -> Result<u32, ClientError> {
        let dimension = upsert.dimension as usize;
        if dimension == 0 || upsert.vectors.len() != upsert.ids.len() * dimension {
            // Malformed: the server says what is wrong.
            return self.any().upsert(upsert);
        }
        let parts = self
            .split(&upsert.ids)
            .into_iter()
            .map(|(leu, positions)| {
                let part = Upsert {
                    collection: upsert.collection.clone(),
                    dimension: upsert.dimension,
                    ids: positions.iter().map(|&p| upsert.ids[p]).collect(),
                    vectors: positions
                        .iter()
                        .flat_map(|&p| &upsert.vectors[p * dimension..(p + 1) * dimension])
                        .copied()
                        .collect(),
                    payloads: if upsert.payloads.len() == upsert.ids.len() {
                        positions
                            .iter()
                            .map(|&p| upsert.payloads[p].clone())
                            .collect()
                    } else {
                        upsert.payloads.clone()
                    },
                };
                (leu, Request::Upsert(part))
            })
            .collect();
        self.scatter_write(&upsert.ids, parts, Opcode::Upsert)
    }

    /// Deletes points, each on its owner LEU; returns the count the LEUs report.
    pub fn delete(&self, collection: &str, ids: Vec<u64>) -> Result<u32, ClientError> {
        let parts = self
            .split(&ids)
            .into_iter()
            .map(|(leu, positions)| {
                let part = Delete {
                    collection: collection.to_owned(),
                    ids: positions.iter().map(|&p| ids[p]).collect(),
                };
                (leu, Request::Delete(part))
            })
            .collect();
        self.scatter_write(&ids, parts, Opcode::Delete)
    }

    /// Sends a write's parts, all before waiting, and sums their counts. Every part is
    /// waited for: if some failed and others did not, the answer is
    /// [`ClientError::Partial`] naming the ids of the parts that failed (as the server
    /// answers a write it split itself; docs/VBP.md); if all failed, the failure that
    /// claims least (one that may have been applied in part first, THROTTLED last).
    fn scatter_write(
        &self,
        ids: &[u64],
        parts: Vec<(usize, Request)>,
        expected: Opcode,
    ) -> Result<u32, ClientError> {
        let pending: Vec<_> = parts
            .iter()
            .map(|(leu, request)| (*leu, self.leus[*leu].send(request)))
            .collect();
        let mut applied = 0u32;
        let mut any_applied = false;
        let mut failures: Vec<(usize, ClientError)> = Vec::new();
        for (leu, sent) in pending {
            match sent.and_then(|pending| pending.wait()) {
                // `wait` took only the request's own answer (or an error).
                Ok(Response::Upserted(ack) | Response::Deleted(ack)) => {
                    applied = applied.saturating_add(ack.count);
                    any_applied = true;
                }
                Ok(other) => failures.push((leu, answer_error(expected, other))),
                Err(error) => failures.push((leu, error)),
            }
        }
        failures.sort_by_key(|(leu, error)| (claim_rank(error), *leu));
        let failed_leus: HashSet<usize> = failures.iter().map(|(leu, _)| *leu).collect();
        let Some((_, cause)) = failures.into_iter().next() else {
            return Ok(applied);
        };
        if !any_applied {
            return Err(cause);
        }
        let mut named = HashSet::new();
        let failed_ids = ids
            .iter()
            .copied()
            .filter(|&id| failed_leus.contains(&self.ring.leu_of(id)) && named.insert(id))
            .collect();
        Err(ClientError::Partial {
            applied,
            failed_ids,
            cause: Box::new(cause),
        })
    }

    /// Fetches points (with vectors and payloads) from their owners, in request order.
    pub fn get(&self, collection: &str, ids: Vec<u64>) -> Result<Vec<PointRecord>, ClientError> {
        let parts = self
            .split(&ids)
            .into_iter()
            .map(|(leu, positions)| {
                let part = Get {
                    collection: collection.to_owned(),
                    ids: positions.iter().map(|&p| ids[p]).collect(),
                    with_vectors: true,
                    with_payload: true,
                };
                (leu, Request::Get(part))
            })
            .collect();
        let mut points = Vec::new();
        for answer in self.scatter(parts)? {
            match answer {
                Response::Points(result) => points.extend(result.points),
                other => return Err(answer_error(Opcode::Get, other)),
            }
        }
        let mut order: HashMap<u64, usize> = HashMap::with_capacity(ids.len());
        for (position, &id) in ids.iter().enumerate() {
            order.entry(id).or_insert(position);
        }
        points.sort_by_key(|point| order.get(&point.id).copied().unwrap_or(usize::MAX));
        Ok(points)
    }

    /// k-nearest-neighbour search (the LEU that reads it gathers it from all).
    pub fn search(&self, search: Search) -> Result<Vec<Hit>, ClientError> {
        self.any().search(search)
    }

    /// k-nearest-neighbour search, spread over every LEU with `fan_out`
    /// ([`Client::search_spread`]).
    pub fn search_spread(&self, search: Search, fan_out: bool) -> Result<Vec<Hit>, ClientError> {
        self.any().search_spread(search, fan_out)
    }
}

/// Which failure a split write reports first: one whose part may have been applied in part
/// (a server's `Internal`, a connection lost or timed out), then the server's other errors,
/// then THROTTLED (its part was not applied).
fn claim_rank(error: &ClientError) -> u8 {
    match error {
        ClientError::Throttled { .. } => 2,
        ClientError::Server {
            code: crate::client::ServerCode::Known(code),
            ..
        } if *code != crate::message::ErrorCode::Internal => 1,
        _ => 0,
    }
}

/// The error for an answer of the wrong kind (errors and THROTTLED answers are turned into
/// errors by [`crate::client::Pending::wait`] already).
fn answer_error(expected: Opcode, answer: Response) -> ClientError {
    ClientError::UnexpectedResponse {
        expected,
        got: answer.opcode(),
    }
}
