//! Reading model checkpoints from disk.
//!
//! [`pickle`] is a safe reader for PyTorch `torch.save` zip checkpoints
//! (`.pt`, `.pth`, `.bin`): it interprets the pickle with a restricted,
//! non-executing interpreter and returns raw tensors.

pub mod pickle;
