package state

import (
	"encoding/json"
	"fmt"
	"sync"

	"github.com/parley-chat/parley/consensus/kv"
)

// roomCache holds every room record in memory, decoded. Each send reads its room (head and
// depth for the new event) and the FSM reads it again to authorize and store the event; both
// used to decode the record's JSON from the database every time. The cache is complete (a
// miss means no such room) because it is loaded whole when the database opens and only the
// FSM changes rooms, handing it each changed record after its transaction commits. Records in
// the cache are never modified: readers get copies.
type roomCache struct {
	mu    sync.RWMutex
	rooms map[string]*Room
}

func newRoomCache() *roomCache { return &roomCache{rooms: map[string]*Room{}} }

func (c *roomCache) load(db *kv.DB) error {
	rooms := map[string]*Room{}
	err := db.View(func(tx *kv.Tx) error {
		return tx.Bucket(bucketRooms).ForEach(func(k, v []byte) error {
			var r Room
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("room %q: %w", k, err)
			}
			rooms[string(k)] = &r
			return nil
		})
	})
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.rooms = rooms
	c.mu.Unlock()
	return nil
}

// get returns a copy of the room's record that the caller may change, except for its power
// levels' maps (see clone).
func (c *roomCache) get(roomID string) (*Room, bool) {
	c.mu.RLock()
	r, ok := c.rooms[roomID]
	c.mu.RUnlock()
	if !ok {
		return nil, false
	}
	return r.clone(), true
}

// set publishes committed records; the cache keeps them, so callers must not change them after.
func (c *roomCache) set(rooms []*Room) {
	if len(rooms) == 0 {
		return
	}
	c.mu.Lock()
	for _, r := range rooms {
		c.rooms[r.RoomID] = r
	}
	c.mu.Unlock()
}

// clone copies the record. The copy shares the power-level maps: they are never changed in
// place (a power_levels event replaces them whole; see PowerLevels), and copying them on every
// send was a measurable share of its cost.
func (r *Room) clone() *Room {
	c := *r
	return &c
}
