// Package state is the org's replicated state: the commands carried by the Raft log, their
// deterministic application to an ordered key-value store (consensus/kv), and the reads every node serves from
// its own applied copy.
//
// Everything that varies between nodes (clocks, random ids, password and token hashes, event
// hashes) is computed before a command enters the log, so applying the same log on every node
// yields the same database, byte for byte in meaning.
package state

import (
	"fmt"

	"github.com/parley-chat/parley/consensus/event"
)

// Kind names a command in the Raft log. The names are part of the on-disk log format: never
// rename one, only add.
type Kind string

// The command kinds.
const (
	KindRegister   Kind = "register"
	KindLogin      Kind = "login"
	KindLogout     Kind = "logout"
	KindCreateRoom Kind = "create_room"
	KindEvent      Kind = "event"
	KindReceipt    Kind = "receipt"
	KindSigningKey Kind = "signing_key"
	KindFedCursor  Kind = "fed_cursor"
	KindRemoteRoom Kind = "remote_room"

	KindBridge       Kind = "bridge"
	KindBridgeCursor Kind = "bridge_cursor"
	KindBridgeClaim  Kind = "bridge_claim"
)

// Command is one change to the org's state. Exactly one of the payload fields matching Kind is
// set. Many commands share one Raft entry (a Batch).
type Command struct {
	Kind       Kind          `json:"k"`
	Register   *Register     `json:"register,omitempty"`
	Login      *Login        `json:"login,omitempty"`
	Logout     *Logout       `json:"logout,omitempty"`
	CreateRoom *CreateRoom   `json:"create_room,omitempty"`
	Event      *EventCommand `json:"event,omitempty"`
	Receipt    *Receipt      `json:"receipt,omitempty"`
	SigningKey *SigningKey   `json:"signing_key,omitempty"`
	FedCursor  *FedCursor    `json:"fed_cursor,omitempty"`
	RemoteRoom *RemoteRoom   `json:"remote_room,omitempty"`

	Bridge       *BridgeCommand `json:"bridge,omitempty"`
	BridgeCursor *BridgeCursor  `json:"bridge_cursor,omitempty"`
	BridgeClaim  *BridgeClaim   `json:"bridge_claim,omitempty"`
}

// BridgeCommand applies one command of an external system (a bridge) at most once per
// (Bridge, TxnID): it creates the virtual user UserID on first use (an account without a
// password, so nobody can log in as it), appends Events in order (a join before a first send),
// and records the outcome, which a repeat of the same (Bridge, TxnID) answers with. A command
// without events (typing, a join of a member) only records that it was handled. A refusal (by
// the room's rules, of any of its events) is a result and changes nothing: not the events before
// the refused one (a join before a send the power levels refuse), nor the virtual user, nor the
// record, so the same txn_id may come again.
type BridgeCommand struct {
	Bridge    string         `json:"bridge"`
	TxnID     string         `json:"txn_id"`
	UserID    string         `json:"user_id"`
	CreatedTS int64          `json:"created_ts"`
	Events    []*event.Event `json:"events,omitempty"`
}

// BridgeClaim claims a (Bridge, TxnID) before the bridge service asks another org, the home org
// of RoomID, to change UserID's membership there (a join, a leave): the home org commits that
// change before the command's BridgeCommand can be, so a command requeued in between must
// recognise that its change may have been made already and not ask for it again (which, after
// a later command's opposite change, would apply it twice). The first claim of a (Bridge,
// TxnID) without a record is stored, with Claim (a random token: the proposer learns that its
// claim won by reading it back, Store.BridgeClaim) and the user's membership in RoomID at that
// point (its stream position); any other claim, and a claim of an applied (Bridge, TxnID),
// changes nothing. The BridgeCommand of the same (Bridge, TxnID) applies over a claim and
// replaces it with its outcome. Release removes the claim whose token is Claim, after the home
// org refused the change (nothing was done, so the same txn_id may come again).
type BridgeClaim struct {
	Bridge  string `json:"bridge"`
	TxnID   string `json:"txn_id"`
	UserID  string `json:"user_id"`
	RoomID  string `json:"room_id"` // a room id, or the alias the command named the room by
	Claim   string `json:"claim"`
	Release bool   `json:"release,omitempty"`
	// Event, if any, is the change the proposer will send (a leave declining an invite, which
	// the home org's acceptance does not commit here): kept with the claim so that a later
	// delivery can commit the very event the home org may have accepted.
	Event *event.Event `json:"event,omitempty"`
}

// ClaimedTxn is a (bridge, txn_id) claimed by a BridgeClaim and not applied yet.
type ClaimedTxn struct {
	Claim  string `json:"claim"`
	RoomID string `json:"room_id"`
	UserID string `json:"user_id"`
	// MemberPos is the stream position of the user's membership in RoomID when the claim was
	// made (0: none): a membership that moved since was changed by something after the claim.
	MemberPos int64        `json:"member_pos,omitempty"`
	Event     *event.Event `json:"event,omitempty"`
}

// BridgeCursor records how far the bridge relay has published the stream to the org's events
// exchange (moved only forward, and only after the broker confirmed what it covers).
type BridgeCursor struct {
	Pos int64 `json:"pos"`
}

// SigningKey installs the org's federation signing key; the first one committed wins, so
// every node of the org signs with the same key.
type SigningKey struct {
	KeyID string `json:"key_id"`
	Seed  []byte `json:"seed"`
}

// FedCursor records how far the outbox has relayed the stream to one destination org (moved
// only after the broker confirmed the transaction).
type FedCursor struct {
	Destination string `json:"destination"`
	Pos         int64  `json:"pos"`
}

// RemoteRoom stores a room of another org as this org first joins it: the state and recent
// events the home org answered with, already verified.
type RemoteRoom struct {
	RoomID string         `json:"room_id"`
	Alias  string         `json:"alias,omitempty"`
	Events []*event.Event `json:"events"`
}

// Register creates an account and its first access token.
type Register struct {
	UserID       string `json:"user_id"`
	PasswordHash []byte `json:"password_hash"`
	TokenHash    string `json:"token_hash"`
	CreatedTS    int64  `json:"created_ts"`
}

// Login records a new access token for an existing account.
type Login struct {
	UserID    string `json:"user_id"`
	TokenHash string `json:"token_hash"`
}

// Logout revokes an access token on every node.
type Logout struct {
	TokenHash string `json:"token_hash"`
}

// CreateRoom creates a room with its initial state events, atomically.
type CreateRoom struct {
	RoomID string         `json:"room_id"`
	Alias  string         `json:"alias,omitempty"`
	Events []*event.Event `json:"events"`
}

// EventCommand appends one sealed event to its room, subject to the room's rules.
type EventCommand struct {
	Event *event.Event `json:"event"`
	// TxnID makes a client's send idempotent per (sender, txn_id).
	TxnID string `json:"txn_id,omitempty"`
	// InviteRoom: the event is a remote org's invite of a local user, verified by the
	// federation inbox; when its room is unknown here, a partial room is made for it.
	InviteRoom bool `json:"invite_room,omitempty"`
}

// Receipt moves a user's read marker in a room.
type Receipt struct {
	RoomID  string `json:"room_id"`
	UserID  string `json:"user_id"`
	EventID string `json:"event_id"`
}

// Batch is the payload of one Raft log entry, written by EncodeBatch (codec.go).
type Batch struct {
	Commands []*Command `json:"c"`
}

// Result is the outcome of applying one command. Code is empty on success, else a client
// protocol error code (M_FORBIDDEN, M_USER_IN_USE, ...). Domain refusals are results, never
// apply failures: every node reaches the same verdict.
type Result struct {
	Code      string `json:"code,omitempty"`
	Message   string `json:"message,omitempty"`
	EventID   string `json:"event_id,omitempty"`
	RoomID    string `json:"room_id,omitempty"`
	StreamPos int64  `json:"stream_pos,omitempty"`
	// Index is the Raft index that carried the command; a node answers its client only once it
	// has applied at least this index itself (read-your-writes).
	Index uint64 `json:"index,omitempty"`
}

// OK reports whether the command took effect (or was an idempotent repeat).
func (r Result) OK() bool { return r.Code == "" }

func refuse(code, format string, args ...any) Result {
	return Result{Code: code, Message: fmt.Sprintf(format, args...)}
}
