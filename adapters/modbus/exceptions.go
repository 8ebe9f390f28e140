package modbus

import (
	"errors"
	"strings"

	"github.com/ferry-gateway/ferry/adapters"
	mb "github.com/simonvetter/modbus"
)

// isException reports whether err is a Modbus exception response: the
// device (or a gateway in front of it) answered.
func isException(err error) bool {
	switch {
	case errors.Is(err, mb.ErrIllegalFunction),
		errors.Is(err, mb.ErrIllegalDataAddress),
		errors.Is(err, mb.ErrIllegalDataValue),
		errors.Is(err, mb.ErrServerDeviceFailure),
		errors.Is(err, mb.ErrAcknowledge),
		errors.Is(err, mb.ErrServerDeviceBusy),
		errors.Is(err, mb.ErrMemoryParityError),
		errors.Is(err, mb.ErrGWPathUnavailable),
		errors.Is(err, mb.ErrGWTargetFailedToRespond):
		return true
	}
	return strings.Contains(err.Error(), "unknown exception code")
}

// transient: the device is busy; the same request may succeed in a moment.
func transient(err error) bool {
	return errors.Is(err, mb.ErrServerDeviceBusy) || errors.Is(err, mb.ErrAcknowledge)
}

// unitError: the unit did not answer (a timeout, or a gateway saying so):
// the device is down, its link may be fine.
func unitError(err error) bool {
	return errors.Is(err, mb.ErrRequestTimedOut) || errors.Is(err, mb.ErrGWPathUnavailable) ||
		errors.Is(err, mb.ErrGWTargetFailedToRespond)
}

// splitOn: exceptions that may concern only some registers of a request,
// so that its parts may succeed.
func splitOn(err error) bool {
	return errors.Is(err, mb.ErrIllegalDataAddress) || errors.Is(err, mb.ErrIllegalDataValue) ||
		errors.Is(err, mb.ErrServerDeviceFailure) || errors.Is(err, mb.ErrMemoryParityError)
}

type nopSink struct{}

func (nopSink) Readings([]adapters.Reading)     {}
func (nopSink) DeviceState(string, bool, error) {}
