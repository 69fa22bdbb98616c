//! The Windows glue: the two ways the shipper asks Windows for numbers. It is the only part
//! of the Windows source that has not run anywhere yet — it compiles for Windows (`cargo
//! check --target x86_64-pc-windows-gnu`), but no Windows node has executed it. What it
//! returns is parsed by the code beside it, which is tested with fixtures.
//!
//! - `vfpctrl.exe` (in System32 on a Windows node with the Containers feature), run without
//!   a shell, its output captured ([`super::command`]).
//! - HNS through `HNSCall` in vmcompute.dll, loaded at run time (as hcsshim does, in
//!   `internal/hns/zsyscall_windows.go`), so a machine without it gets an error from this
//!   source rather than a shipper that cannot start. `HNSCall(method, path, request,
//!   &response)` returns an HRESULT and a UTF-16 JSON answer allocated with CoTaskMemAlloc.

use super::hns::{self, EndpointStats};
use super::{command, WindowsPlatform};
use crate::source::SourceError;
use std::ffi::c_void;
use std::time::Duration;
use windows_sys::Win32::System::Com::CoTaskMemFree;
use windows_sys::Win32::System::LibraryLoader::{
    GetProcAddress, LoadLibraryExW, LOAD_LIBRARY_SEARCH_SYSTEM32,
};

/// How long one `vfpctrl` run may take.
const VFPCTRL_TIMEOUT: Duration = Duration::from_secs(10);

/// `HNSCall`'s signature, as hcsshim declares it.
type HnsCall = unsafe extern "system" fn(*const u16, *const u16, *const u16, *mut *mut u16) -> i32;

/// This machine.
pub struct Native {
    /// `HNSCall`, or why it could not be found.
    hns_call: Result<HnsCall, String>,
}

impl Default for Native {
    fn default() -> Self {
        Native {
            hns_call: load_hns_call(),
        }
    }
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(Some(0)).collect()
}

fn load_hns_call() -> Result<HnsCall, String> {
    let dll = wide("vmcompute.dll");
    // SAFETY: a NUL-terminated UTF-16 name; the module is never freed, so the function
    // pointer taken from it stays valid for the life of the process.
    let module = unsafe {
        LoadLibraryExW(
            dll.as_ptr(),
            std::ptr::null_mut(),
            LOAD_LIBRARY_SEARCH_SYSTEM32,
        )
    };
    if module.is_null() {
        return Err(format!(
            "cannot load vmcompute.dll ({}); HNS needs Windows with the Containers feature",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a loaded module and a NUL-terminated name.
    let proc = unsafe { GetProcAddress(module, c"HNSCall".as_ptr().cast()) };
    let proc = proc.ok_or_else(|| "vmcompute.dll has no HNSCall".to_owned())?;
    // SAFETY: HNSCall has this signature (hcsshim, internal/hns/zsyscall_windows.go).
    Ok(unsafe { std::mem::transmute::<unsafe extern "system" fn() -> isize, HnsCall>(proc) })
}

impl Native {
    /// An HNS `GET` of `path`; HNS's JSON answer as it came.
    fn hns_get(&self, path: &str) -> Result<String, SourceError> {
        let call = format!("HNS GET {path}");
        let f = *self.hns_call.as_ref().map_err(|msg| SourceError::Call {
            call: call.clone(),
            msg: msg.clone(),
        })?;
        let (method, path_w, request) = (wide("GET"), wide(path), wide(""));
        let mut response: *mut u16 = std::ptr::null_mut();
        // SAFETY: NUL-terminated UTF-16 arguments that outlive the call; `response` receives
        // a CoTaskMemAlloc'd NUL-terminated string or stays null.
        let hr = unsafe {
            f(
                method.as_ptr(),
                path_w.as_ptr(),
                request.as_ptr(),
                &mut response,
            )
        };
        let mut text = String::new();
        if !response.is_null() {
            // SAFETY: `response` is NUL-terminated (HNSCall's contract); read up to the NUL,
            // then freed once.
            unsafe {
                let len = (0..).take_while(|&i| *response.add(i) != 0).count();
                text = String::from_utf16_lossy(std::slice::from_raw_parts(response, len));
                CoTaskMemFree(response as *const c_void);
            }
        }
        if hr < 0 {
            return Err(SourceError::Call {
                call,
                msg: format!("HNSCall returned HRESULT {:#010x}", hr as u32),
            });
        }
        Ok(text)
    }
}

impl WindowsPlatform for Native {
    fn list_ports(&self) -> Result<String, SourceError> {
        command::output("vfpctrl.exe", &["/list-vmswitch-port"], VFPCTRL_TIMEOUT)
    }

    fn port_counters(&self, port: &str) -> Result<String, SourceError> {
        command::output(
            "vfpctrl.exe",
            &["/port", port, "/get-port-counter"],
            VFPCTRL_TIMEOUT,
        )
    }

    fn endpoint_stats(&self) -> Result<Vec<EndpointStats>, SourceError> {
        hns::endpoint_stats_via(|path| self.hns_get(path))
    }
}
