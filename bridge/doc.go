// Package bridge connects external systems (IRC gateways, helpdesks, bots) to an org's rooms
// over AMQP: committed events out to a topic exchange, commands in from a queue.
//
// Topology (amqp.md, "Bridges to external systems"), declared idempotently by every node:
//
//	parley.ORG.events      topic exchange: every committed event of every bridged room,
//	                       routing key ROOM.TYPE ('.' replaced by '_' in each part)
//	parley.ORG.bridge.in   quorum queue of commands, dead-lettering to parley.ORG.bridge.dlx
//	parley.ORG.bridge.dlx  fanout exchange, with parley.ORG.bridge.dlq bound: refused commands
//	                       with header x-parley-error = "M_CODE: reason"
//
// Only the Raft leader relays and consumes. Outbound, the relay reads the org's stream after a
// cursor kept in the Raft log, publishes the events of bridged rooms in stream order with
// publisher confirms, and moves the cursor only after the confirms: delivery is at least once
// (message_id = event_id lets a bridge drop a repeat) and resumes after any failover, restart
// or broker outage. Inbound, each command is validated (schema, size, UTF-8, user_id, namespace,
// room, content exactly like a client's, HTML sanitized), committed through Raft as one
// state.BridgeCommand that the state machine applies at most once per (bridge, txn_id), and
// only then acked. A refused command is published to the dead-letter exchange with its reason
// and acked; a command that could not be committed (no quorum) is requeued.
package bridge
