package kv

import "bytes"

// readAhead is how many entries a cursor collects per walk of the tree, so stepping costs a tree
// descent only once per readAhead steps.
const readAhead = 32

// Cursor walks a bucket's keys in order, forwards or backwards. Methods return nil keys when
// there is no such entry.
type Cursor struct {
	tree    *tree
	buf     []entry // entries collected by the last walk, in the direction of travel
	i       int     // buf[i] is the current entry
	forward bool
}

// First moves to the first key.
func (c *Cursor) First() (key, value []byte) {
	if c.tree == nil {
		return nil, nil
	}
	c.collect(func(fn func(entry) bool) { c.tree.Ascend(fn) }, true, nil)
	return c.at()
}

// Last moves to the last key.
func (c *Cursor) Last() (key, value []byte) {
	if c.tree == nil {
		return nil, nil
	}
	c.collect(func(fn func(entry) bool) { c.tree.Descend(fn) }, false, nil)
	return c.at()
}

// Seek moves to the first key at or after seek.
func (c *Cursor) Seek(seek []byte) (key, value []byte) {
	if c.tree == nil {
		return nil, nil
	}
	p := probe(seek)
	c.collect(func(fn func(entry) bool) { c.tree.AscendGreaterOrEqual(p, fn) }, true, nil)
	return c.at()
}

// Next moves to the key after the current one.
func (c *Cursor) Next() (key, value []byte) {
	if c.i >= len(c.buf) {
		return nil, nil
	}
	if c.forward && c.i+1 < len(c.buf) {
		c.i++
		return c.at()
	}
	from := c.buf[c.i]
	c.collect(func(fn func(entry) bool) { c.tree.AscendGreaterOrEqual(from, fn) }, true, from.key())
	return c.at()
}

// Prev moves to the key before the current one.
func (c *Cursor) Prev() (key, value []byte) {
	if c.i >= len(c.buf) {
		return nil, nil
	}
	if !c.forward && c.i+1 < len(c.buf) {
		c.i++
		return c.at()
	}
	from := c.buf[c.i]
	c.collect(func(fn func(entry) bool) { c.tree.DescendLessOrEqual(from, fn) }, false, from.key())
	return c.at()
}

// collect refills buf by one walk of the tree, leaving out the entry at skip (the one the cursor
// is leaving).
func (c *Cursor) collect(walk func(func(entry) bool), forward bool, skip []byte) {
	c.buf, c.i, c.forward = c.buf[:0], 0, forward
	walk(func(e entry) bool {
		if skip != nil && bytes.Equal(e.key(), skip) {
			return true
		}
		c.buf = append(c.buf, e)
		return len(c.buf) < readAhead
	})
}

func (c *Cursor) at() (key, value []byte) {
	if c.i >= len(c.buf) {
		return nil, nil
	}
	return c.buf[c.i].key(), c.buf[c.i].value()
}
