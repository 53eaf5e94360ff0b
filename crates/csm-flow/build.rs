//! Lets this crate's tests find MLX's shared library (csm-core links it; a
//! test binary of this crate needs the same rpath).
fn main() {
    let dir = std::env::var("DEP_MLX_LIB_DIR").expect("mlx-sys publishes DEP_MLX_LIB_DIR");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
}
