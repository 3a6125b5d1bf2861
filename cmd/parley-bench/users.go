package main

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/parley-chat/parley/cmd/parley-bench/internal/client"
)

// userSpec names one bench user and the node it is registered on.
type userSpec struct {
	name   string
	target client.Target
}

// userName is the localpart of the i-th user of a role ("p" publishers,
// "s" subscribers, "c" idle connections, "w" watchers…) of this run.
func (e *env) userName(role string, i int) string {
	return e.opt.userPrefix + "-" + role + strconv.Itoa(i)
}

// provisionUsers registers every user (logging in instead when the name is
// already taken or registration is closed), in parallel, and returns their
// sessions in order. Any failure fails the setup, and stops it at once: a node
// that does not answer costs one request timeout, not one per round of users.
func (e *env) provisionUsers(ctx context.Context, label string, users []userSpec) ([]client.Session, error) {
	out := make([]client.Session, len(users))
	var done, failed atomic.Int64
	var firstErr atomic.Pointer[error]
	e.prog.Phase(label, func() progressState {
		return progressState{Done: done.Load(), Total: int64(len(users)), Detail: fmt.Sprintf("failed %d", failed.Load())}
	})
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	forEach(pctx, len(users), e.opt.setupConc, func(i int) {
		s, err := e.ensureUser(pctx, users[i])
		if err != nil {
			if firstErr.Load() != nil && ctx.Err() == nil && pctx.Err() != nil {
				return // stopped by another user's failure
			}
			failed.Add(1)
			err = fmt.Errorf("user %s on %s: %w", users[i].name, users[i].target.Addr, err)
			firstErr.CompareAndSwap(nil, &err)
			stop()
			return
		}
		out[i] = s
		done.Add(1)
	})
	if p := firstErr.Load(); p != nil {
		return nil, fmt.Errorf("%d of %d users could not be registered or logged in (%d were, the rest not tried); first: %w", failed.Load(), len(users), done.Load(), *p)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("registering users: %d of %d done: %w (passwords are hashed slowly: raise --setup-timeout, or --conns-per-user for fewer users)", done.Load(), len(users), err)
	}
	return out, nil
}

func (e *env) ensureUser(ctx context.Context, u userSpec) (client.Session, error) {
	api, err := e.api(u.target)
	if err != nil {
		return client.Session{}, err
	}
	var s client.Session
	// A node answers 503 M_UNAVAILABLE while its cluster elects a leader: retry, like a client.
	for attempt := 0; ; attempt++ {
		rctx, cancel := context.WithTimeout(ctx, e.opt.timeout)
		s, err = api.Register(rctx, u.name, e.opt.password)
		cancel()
		if err == nil {
			return s, nil
		}
		if errKey(err) != "HTTP 503 M_UNAVAILABLE" || attempt >= 20 || !sleepCtx(ctx, 250*time.Millisecond) {
			break
		}
	}
	if code := errKey(err); code != "HTTP 409 M_USER_IN_USE" && code != "HTTP 403 M_FORBIDDEN" {
		return client.Session{}, fmt.Errorf("register: %w", err)
	}
	lctx, cancel2 := context.WithTimeout(ctx, e.opt.timeout)
	defer cancel2()
	s, lerr := api.Login(lctx, u.name, e.opt.password)
	if lerr != nil {
		return client.Session{}, fmt.Errorf("register: %v; login: %w", err, lerr)
	}
	return s, nil
}
