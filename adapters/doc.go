// Package adapters holds what every device adapter shares: the Reading a
// poll or subscription produces, its Value and its Quality, and the write
// side of commands. Adapters live in the sub-packages (modbus, opcua);
// they import this package and nothing else of ferry except config.
//
// # Commands
//
// An adapter whose devices take commands implements Writer, one method:
//
//	CompileWrite(tag string) (TagWrite, error)
//
// The gateway calls it once per writable tag when the config is loaded or
// a reload changes the device, never per command. CompileWrite refuses a
// tag that does not exist or is not writable, and does every check that
// depends on the tag alone (table, type, byte order, scaling); it returns
// a TagWrite that holds what the tag's writes need (the encoder and
// decoder of a Modbus tag, the node of an OPC UA tag) and the tag's min
// and max. For each command the gateway then calls
//
//	Check(v)                  without I/O: the value against the tag's type
//	                          and, exactly, its min and max (CheckLimits)
//	Write(ctx, raw, verify)   the device I/O, with what Check returned
//
// so every command is validated once, by the adapter that knows the tag,
// before anything is sent. Every refusal and failure is a *WriteError
// whose Code is one of the result codes below; the gateway finds it with
// errors.As. An error of any other type is answered device_error (timeout
// when it is context.DeadlineExceeded). A third adapter needs nothing
// else from the gateway than this interface.
package adapters
