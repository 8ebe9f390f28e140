package adapters

import "fmt"

// Write result codes (CONTRACT.md, Commands) an adapter's write can fail
// with; the gateway answers every other failure as device_error.
const (
	CodeBadValue    = "bad_value"
	CodeDeviceError = "device_error"
	CodeTimeout     = "timeout"
)

// WriteError is why a write to a device failed; Code is one of the Code
// constants.
type WriteError struct {
	Code string
	Err  error
}

func (e *WriteError) Error() string { return e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// WriteCode is the result code of the contract.
func (e *WriteError) WriteCode() string { return e.Code }

// BadValue is a WriteError with CodeBadValue: the value cannot be written
// to the tag as it is (type, range, size).
func BadValue(format string, args ...any) error {
	return &WriteError{Code: CodeBadValue, Err: fmt.Errorf(format, args...)}
}
