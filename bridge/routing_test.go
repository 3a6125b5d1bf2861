package bridge

import (
	"strings"
	"testing"
	"time"

	"github.com/parley-chat/parley/consensus/event"
	"github.com/parley-chat/parley/consensus/state"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// TestALongPeerRoomIDDoesNotStopTheRelay: a peer's room id is the peer's choice, and one whose
// routing key is over AMQP's 255 bytes made the client library close the node's AMQP
// connection at each try, so the relay stalled on that event and every bridge heard nothing
// more. Such an event is left out (and logged); the events after it are published.
func TestALongPeerRoomIDDoesNotStopTheRelay(t *testing.T) {
	t.Parallel()
	peer := newPeerRoom(t)
	peer.roomID = "!" + strings.Repeat("r", 250) + ":" + peerOrgName
	peer.create.RoomID = peer.roomID
	if err := event.Seal(peer.create); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, withRemote(peer, peer.roomID))
	cluster := e.nodes[0].Srv.Cluster()
	peer.cluster.Store(cluster)
	all := e.bindEvents("#")

	ctx := ctxT(t, 20*time.Second)
	res, err := cluster.ProposeBatch(ctx, []*state.Command{{Kind: state.KindRemoteRoom,
		RemoteRoom: &state.RemoteRoom{RoomID: peer.roomID, Events: []*event.Event{peer.create}}}})
	if err != nil || !res[0].OK() {
		t.Fatalf("the peer's room: %v %+v", err, res)
	}
	id, err := e.alice.Send(ctx, e.lobby, "after-long", "after the long room")
	if err != nil {
		t.Fatal(err)
	}
	all.waitFor(t, "the lobby's message after the long room's event", func(d amqp091.Delivery, ev map[string]any) bool {
		return ev["event_id"] == id
	})
	for _, d := range all.snapshot() {
		if ev := wireEvent(t, d); ev["room_id"] == peer.roomID {
			t.Errorf("published an event of the long room with routing key %q", d.RoutingKey)
		}
	}
}
