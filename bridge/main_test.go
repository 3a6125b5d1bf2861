package bridge

import (
	"testing"

	"go.uber.org/goleak"
)

// The system tests run real nodes in-process against the real RabbitMQ (see
// internal/bridgetest); every goroutine they start must be gone at the end.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
