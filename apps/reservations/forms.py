from django import forms


class MarkPaidForm(forms.Form):
    payment_reference = forms.CharField(
        max_length=100, help_text="The payment's reference at the bank or payment provider."
    )


class ExtendHoldForm(forms.Form):
    minutes = forms.IntegerField(
        min_value=1, max_value=24 * 60, help_text="Move the hold's end later by this many minutes."
    )
