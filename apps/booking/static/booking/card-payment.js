// Pays a held slot by card in the page, through Stripe.js. The server makes
// the PaymentIntent (manual capture), confirms it with the card's payment
// method and captures it once the slot is confirmed the customer's; this
// script only carries the card from Stripe's field to the server, and lets
// Stripe.js ask the customer's bank when it wants them to confirm (3-D Secure).
(function () {
  const form = document.getElementById("card-payment");
  if (!form) return;
  const api = form.dataset.paymentUrl;  // .../payment/
  const stripe = Stripe(form.dataset.publishableKey);
  const card = stripe.elements().create("card");
  card.mount("#card-element");
  const button = document.getElementById("card-pay");
  button.disabled = false;  // the card field is mounted: paying can start
  const message = document.getElementById("card-message");
  const say = (text, failed = false) => {
    message.textContent = text;
    message.classList.toggle("error", failed);
  };
  const NOT_CONFIRMED = "Your bank did not confirm the payment, so nothing was charged. " +
    "Try again or use another card.";

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: body ? JSON.stringify(body) : undefined,
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((answer.error && answer.error.message) || "Payment failed.");
    return answer;
  }

  // A payment method from the card field. Stripe.js makes one; a stand-in
  // without createPaymentMethod (a local test server) makes a card token,
  // whose card serves the same purpose there.
  async function paymentMethod() {
    const made = await stripe.createPaymentMethod({ type: "card", card: card });
    if (made && made.paymentMethod) return made.paymentMethod.id;
    if (made && made.error) throw new Error(made.error.message);
    // The stand-in says only "Bad request", or throws when the field is empty.
    const tokenised = await stripe.createToken(card).catch(() => ({}));
    if (!tokenised.token) throw new Error("Check the card details and try again.");
    return tokenised.token.card.id;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    say("Paying…");
    try {
      // The card first: a mistyped one starts nothing at the server.
      const method = await paymentMethod();
      const payment = await post(api);
      let answer = await post(`${api}authorise/`, { payment_method: method });
      if (answer.status === "requires_action") {
        say("Your bank asks you to confirm the payment…");
        const confirmed = await stripe.confirmCardPayment(payment.client_secret);
        if (confirmed.error) throw new Error(confirmed.error.message || NOT_CONFIRMED);
        answer = await post(`${api}check/`);
      }
      // Stripe.js reports a failed authentication as an error; the stand-in
      // returns the intent, waiting for a card again. Either way the server's
      // read of it says so: not paid, and not in progress either.
      if (answer.status === "requires_payment_method") throw new Error(NOT_CONFIRMED);
      if (answer.reservation_status !== "pending" || answer.outcome) {
        window.location.reload();
        return;
      }
      say("Your payment is being processed: this page updates when it is done.");
      setTimeout(() => window.location.reload(), 3000);
    } catch (error) {
      say(error.message, true);
      button.disabled = false;
    }
  });
})();
