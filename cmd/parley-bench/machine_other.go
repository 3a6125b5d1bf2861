//go:build !(linux || darwin || freebsd)

package main

import (
	"context"
	"errors"
)

func probeMachine(context.Context, string) (machineCosts, error) {
	return machineCosts{}, errors.ErrUnsupported
}
