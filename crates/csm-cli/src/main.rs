fn main() { let a = csm_core::mlx_rs::Array::from_slice(&[1.0f32,2.0], &[2]); println!("{:?}", a); }
