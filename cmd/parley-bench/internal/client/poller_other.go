//go:build !linux

package client

import "errors"

// Poller serves connections with epoll loops on Linux; elsewhere there is none, and every
// connection has a reader goroutine.
type Poller struct{}

// NewPoller returns errors.ErrUnsupported where there is no epoll.
func NewPoller() (*Poller, error) { return nil, errors.ErrUnsupported }

// Close does nothing.
func (p *Poller) Close() {}

func (p *Poller) register(*Conn) bool { return false }

type pollConn struct{}

func (pc *pollConn) detach() {}
