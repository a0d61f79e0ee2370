//! The one-node cluster slotmux shows to cluster-aware clients (redis-py `RedisCluster`,
//! Lettuce, JedisCluster, go-redis `ClusterClient`).
//!
//! Such a client asks `CLUSTER SLOTS`/`SHARDS`/`NODES` and then connects to the nodes it is
//! told about; behind a Kubernetes Service it cannot reach them. So slotmux answers as a
//! cluster of one master, itself at its announced address, owning all 16384 slots: the client
//! sends everything to slotmux, which keeps doing the routing.
//! Owns: the replies to CLUSTER SLOTS, SHARDS, NODES, MYID and INFO in that picture.
//! Must not: describe the real nodes (that is what slotmux hides).

use bytes::BytesMut;

use crate::resp::write::{self, Proto};

/// Who slotmux says it is.
pub struct Me<'a> {
    /// 40 hex digits, stable for the process.
    pub id: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// Every slot has a reachable master behind slotmux.
    pub ok: bool,
}

pub fn slots(out: &mut BytesMut, me: &Me<'_>) {
    write::array_header(out, 1);
    write::array_header(out, 3);
    write::integer(out, 0);
    write::integer(out, 16383);
    write::array_header(out, 4);
    write::bulk(out, me.host.as_bytes());
    write::integer(out, i64::from(me.port));
    write::bulk(out, me.id.as_bytes());
    write::array_header(out, 0);
}

pub fn shards(out: &mut BytesMut, proto: Proto, me: &Me<'_>) {
    write::array_header(out, 1);
    write::map_header(out, proto, 2);
    write::bulk(out, b"slots");
    write::array_header(out, 2);
    write::integer(out, 0);
    write::integer(out, 16383);
    write::bulk(out, b"nodes");
    write::array_header(out, 1);
    write::map_header(out, proto, 7);
    write::bulk(out, b"id");
    write::bulk(out, me.id.as_bytes());
    write::bulk(out, b"port");
    write::integer(out, i64::from(me.port));
    write::bulk(out, b"ip");
    write::bulk(out, me.host.as_bytes());
    write::bulk(out, b"endpoint");
    write::bulk(out, me.host.as_bytes());
    write::bulk(out, b"role");
    write::bulk(out, b"master");
    write::bulk(out, b"replication-offset");
    write::integer(out, 0);
    write::bulk(out, b"health");
    write::bulk(out, if me.ok { &b"online"[..] } else { b"fail" });
}

pub fn nodes_text(me: &Me<'_>) -> String {
    format!(
        "{} {}:{}@{} myself,master - 0 0 1 connected 0-16383\n",
        me.id,
        me.host,
        me.port,
        u32::from(me.port) + 10000
    )
}

pub fn info_text(me: &Me<'_>) -> String {
    let state = if me.ok { "ok" } else { "fail" };
    let slots_ok = if me.ok { 16384 } else { 0 };
    format!(
        "cluster_enabled:1\r\ncluster_state:{state}\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:{slots_ok}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:{}\r\ncluster_known_nodes:1\r\ncluster_size:1\r\ncluster_current_epoch:1\r\ncluster_my_epoch:1\r\n",
        16384 - slots_ok
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Me<'static> {
        Me {
            id: "0123456789012345678901234567890123456789",
            host: "10.0.0.7",
            port: 6379,
            ok: true,
        }
    }

    #[test]
    fn one_master_owns_every_slot() {
        let mut b = BytesMut::new();
        slots(&mut b, &me());
        assert_eq!(
            &b[..],
            &b"*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$8\r\n10.0.0.7\r\n:6379\r\n$40\r\n0123456789012345678901234567890123456789\r\n*0\r\n"[..]
        );
        assert_eq!(
            nodes_text(&me()),
            "0123456789012345678901234567890123456789 10.0.0.7:6379@16379 myself,master - 0 0 1 connected 0-16383\n"
        );
        let mut b = BytesMut::new();
        shards(&mut b, Proto::Resp3, &me());
        assert!(b.starts_with(b"*1\r\n%2\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n"));
        assert!(info_text(&me()).contains("cluster_state:ok\r\n"));
    }
}
